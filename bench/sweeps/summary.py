"""What a finished sweep or ablation prints: the best trial chosen on validation with its re-run command, or
the variants' mean ± std over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.console_tables import compact_table, fitted, left_out_note
from bench.errors import BenchError
from bench.sweeps.sweep import Sweep, best_record, rerun_command


def sweep_summary(sweep: Sweep, console: Console) -> None:
    records = sweep.records()
    stopped = sum(1 for r in records if r.get("stopped_early"))
    console.print(f"{sweep.name}: {len(records)} of {sweep.num_trials} trials recorded"
                  + (f" ({stopped} stopped early by ASHA)" if stopped else ""), highlight=False, markup=False)
    best = best_record(records, sweep.metric)
    if best is None:
        raise BenchError(f"sweep {sweep.name}: no trial finished with a defined {sweep.metric}; see the run logs "
                         f"under {sweep.plan.run.out}/runs/{sweep.name}-*")
    table = compact_table(f"best trial: {best['tags'].get('trial', best['run_id'])}",
                          f"chosen on {sweep.metric} (validation); test is shown, never used to select")
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for name in sorted(sweep.space):
        table.add_row(Text(name), Text(_value(best["hparams"].get(name))))
    table.add_row(sweep.metric, _num(best["val"].get(sweep.metric.removeprefix("val_"))), style="bold")
    table.add_row("test overall", _num(best["test"]["overall"]), style="dim")
    console.print(table)
    console.print(f"re-run it: {rerun_command(best, sweep)}", highlight=False, soft_wrap=True, markup=False)


ABLATION_COLUMNS = {"val": ("val", None), "test": ("test", "overall"), "many": ("test", "many"),
                    "medium": ("test", "medium"), "few": ("test", "few")}
ABLATION_LEFT_OUT_FIRST = ("many", "medium", "val")


def ablation_summary(sweep: Sweep, console: Console) -> None:
    records = sweep.records()
    variants = list(dict.fromkeys(t.method for t in sweep.trials))
    chosen_on = sweep.metric.removeprefix("val_")
    about = f"mean ± std over seeds; val: {chosen_on} (the sweep's rule); test: overall accuracy %"

    def build(left_out: Sequence[str]) -> Table:
        columns = [column for column in ABLATION_COLUMNS if column not in left_out]
        table = compact_table(f"{sweep.name}: {len(records)} of {sweep.num_trials} runs",
                              "; ".join(filter(None, (about, left_out_note(left_out)))))
        table.add_column("variant", no_wrap=True)
        table.add_column("n", justify="right", no_wrap=True)
        for column in columns:
            table.add_column(column, justify="right", no_wrap=True)
        for variant in variants:
            runs = [r for r in records if r["method"] == variant]
            table.add_row(Text(variant), str(len(runs)), *(_mean_std([r[split].get(metric or chosen_on)
                                                                      for r in runs])
                                                          for split, metric in map(ABLATION_COLUMNS.get, columns)))
        return table

    console.print(fitted(build, ABLATION_LEFT_OUT_FIRST, console))


def _mean_std(values: list[float | None]) -> str:
    import numpy as np

    values = [value for value in values if value is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
