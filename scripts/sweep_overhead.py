"""Per-trial overhead of the Ray executor against the in-process one, measured side by side in one run.

Both executors run the same random-search trials (same configurations, seeds and threads), one trial at a time
(each trial takes all --cpus), so the difference is the executor's own cost: Ray's start, a worker process per
trial, result plumbing. Overhead per trial = (sweep wall time − Σ the runs' own wall time) / trials.

    python scripts/sweep_overhead.py --method lpt --trials 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

from bench.hparams import parse_assignments
from bench.run_spec import RunSpec
from bench.store import ResultsStore
from bench.sweeps.define import Request, define_sweep, execute_sweep
from bench.sweeps.execution import Execution


def measure(executor: str, args, root: str, console: Console) -> dict:
    run = RunSpec(method=args.method, dataset="digits_lt", overrides=parse_assignments(args.set), out=root)
    request = Request(run, Execution(executor=executor, cpus_per_trial=args.cpus), name=f"overhead-{executor}")
    sweep = define_sweep(request, args.trials, "random", "none", None, search_seed=0, grace_period=1,
                         reduction_factor=3)
    started = time.perf_counter()
    execute_sweep(sweep, console)
    wall = time.perf_counter() - started
    records = ResultsStore(root).records(sweep=sweep.name)
    in_runs = sum(r["wall_time_s"] for r in records)
    return {"wall": wall, "in_runs": in_runs, "trials": len(records),
            "overhead": (wall - in_runs) / max(1, len(records)),
            "val": {r["tags"]["trial"]: r["val"]["overall"] for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lpt")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="threads of each trial (one at a time)")
    parser.add_argument("--set", action="append", default=[], help="key=value pinned in every trial")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as root:
        results = {executor: measure(executor, args, root, console) for executor in ("local", "ray")}
    table = Table(title=f"{args.trials} {args.method} trials on the embedded default, one at a time, "
                        f"{args.cpus} threads each")
    for column in ("executor", "trials recorded", "sweep wall s", "Σ run wall s", "overhead s/trial"):
        table.add_column(column, justify="right")
    for executor, r in results.items():
        table.add_row(executor, str(r["trials"]), f"{r['wall']:.1f}", f"{r['in_runs']:.1f}", f"{r['overhead']:.2f}")
    console.print(table)
    local, ray = results["local"], results["ray"]
    console.print(f"Ray / local: overhead per trial {ray['overhead'] / local['overhead']:.1f}×, "
                  f"sweep wall time {ray['wall'] / local['wall']:.2f}×")
    same = local["val"] == ray["val"]
    console.print(f"same val overall for every trial under both executors: {same}")


if __name__ == "__main__":
    main()
