"""What a finished sweep or ablation prints: the best trial chosen on validation with its re-run command, or
the variants' mean ± std over seeds."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.errors import BenchError
from bench.sweeps.model import Sweep, best_record, rerun_command


def sweep_summary(sweep: Sweep, console: Console) -> None:
    records = sweep.records()
    stopped = sum(1 for r in records if r.get("stopped_early"))
    console.print(f"{sweep.name}: {len(records)} of {sweep.num_trials} trials recorded"
                  + (f" ({stopped} stopped early by ASHA)" if stopped else ""), highlight=False, markup=False)
    best = best_record(records, sweep.metric)
    if best is None:
        raise BenchError(f"sweep {sweep.name}: no trial finished with a defined {sweep.metric}; see the run logs "
                         f"under {sweep.plan.run.out}/runs/{sweep.name}-*")
    table = Table(title=f"best trial: {best['tags'].get('trial', best['run_id'])}",
                  caption=f"chosen on {sweep.metric} (validation); test is shown, never used to select")
    table.add_column("")
    table.add_column("value", justify="right")
    for name in sorted(sweep.space):
        table.add_row(Text(name), Text(_value(best["hparams"].get(name))))
    table.add_row(sweep.metric, _num(best["val"].get(sweep.metric.removeprefix("val_"))), style="bold")
    table.add_row("test overall", _num(best["test"]["overall"]), style="dim")
    console.print(table)
    console.print(f"re-run it: {rerun_command(best, sweep)}", highlight=False, soft_wrap=True, markup=False)


def ablation_summary(sweep: Sweep, console: Console) -> None:
    import numpy as np

    records = sweep.records()
    table = Table(title=f"{sweep.name}: {len(records)} of {sweep.num_trials} runs (mean ± std over seeds)")
    chosen_on = sweep.metric.removeprefix("val_")
    for column in ("variant", "seeds", f"val {chosen_on}", "test overall", "many", "medium", "few"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    variants = list(dict.fromkeys(t.method for t in sweep.trials))
    for variant in variants:
        runs = [r for r in records if r["method"] == variant]
        cells = []
        for split, metric in (("val", chosen_on), ("test", "overall"), ("test", "many"), ("test", "medium"),
                              ("test", "few")):
            values = [r[split][metric] for r in runs if r[split].get(metric) is not None]
            cells.append("–" if not values else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
                         if len(values) > 1 else f"{values[0]:.2f}")
        table.add_row(variant, str(len(runs)), *cells)
    console.print(table)


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
