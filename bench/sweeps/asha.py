"""Asynchronous successive halving (Li et al. 2020) for the in-process executor: the rule of Ray Tune's
ASHAScheduler (one bracket), so a sweep stops the same kind of trials whichever executor runs it.

Rungs lie at grace_period · reduction_factor^k epochs. A trial reaching a rung first is compared with the
values recorded there so far: below their (1 − 1/reduction_factor) quantile, it stops.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.atomic_io import atomic_write_json, read_json

ASHA_MAX_T = 10_000  # trials end by themselves; ASHA only stops them early


class LocalASHA:
    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, state_file: Path | None = None):
        rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self.milestones = [grace_period * reduction_factor ** k for k in reversed(range(rungs))]
        self.reduction_factor = reduction_factor
        self.state_file = state_file
        self.recorded: dict[str, dict[str, float]] = {str(m): {} for m in self.milestones}
        if state_file is not None and state_file.exists():
            self.recorded.update(read_json(state_file))

    def should_stop(self, trial_key: str, epoch: int, value: float) -> bool:
        for milestone in self.milestones:
            recorded = self.recorded[str(milestone)]
            if epoch < milestone or trial_key in recorded:
                continue
            values = [v for v in recorded.values() if v is not None and not math.isnan(v)]
            stop = bool(values) and value < np.nanpercentile(values, (1 - 1 / self.reduction_factor) * 100)
            recorded[trial_key] = value
            if self.state_file is not None:
                atomic_write_json(self.state_file, self.recorded)
            return stop
        return False
