"""How much the methods learn on the embedded default (digits_lt, the shipped vit_micro.fmnist), over seeds: the
measurement behind the thresholds of tests/test_learning.py.

    python scripts/embedded_learning.py --seeds 0 1 2 3 4      # ~6 min on 2 CPU cores

For each seed it runs finetune (cross-entropy), la and bs (long-tail losses) and lpt, exactly as `bench run
--method M --seed S` would, and prints test accuracy on the few-shot group (la / bs vs cross-entropy) and LPT's
best val accuracy in phase 1 and in phase 2, then each comparison's smallest and mean margin over the seeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from rich.console import Console
from rich.table import Table

METHODS = ("finetune", "la", "bs", "lpt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    from bench import runner

    console = Console()
    quiet = Console(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            row = {"seed": seed}
            for method in METHODS:
                start = time.perf_counter()
                record = runner.execute(runner.RunSpec(method=method, dataset="digits_lt", seed=seed, out=out),
                                        console=quiet).record
                row[method] = record["test"]
                row[f"{method}_s"] = time.perf_counter() - start
                if method == "lpt":
                    row["phase_val"] = {entry["phase"]: entry["val"] for entry in record["selected"]}
            rows.append(row)
            console.print(f"seed {seed}: " + ", ".join(f"{m} {row[m]['overall']:.1f} % ({row[m + '_s']:.0f} s)"
                                                      for m in METHODS))
    table = Table(title="embedded default (digits_lt, vit_micro.fmnist): test few-shot accuracy and LPT's val")
    for column in ("seed", "CE few", "la few", "bs few", "la − CE", "bs − CE", "LPT val ph1", "LPT val ph2",
                   "ph2 − ph1", "LPT test"):
        table.add_column(column, justify="right")
    margins = {"la − CE few": [], "bs − CE few": [], "LPT ph2 − ph1 val": []}
    for row in rows:
        ce, la, bs = (row[m]["few"] for m in ("finetune", "la", "bs"))
        ph1, ph2 = row["phase_val"]["lpt_shared"], row["phase_val"]["lpt_group"]
        margins["la − CE few"].append(la - ce)
        margins["bs − CE few"].append(bs - ce)
        margins["LPT ph2 − ph1 val"].append(ph2 - ph1)
        table.add_row(str(row["seed"]), f"{ce:.1f}", f"{la:.1f}", f"{bs:.1f}", f"{la - ce:+.1f}", f"{bs - ce:+.1f}",
                      f"{ph1:.1f}", f"{ph2:.1f}", f"{ph2 - ph1:+.1f}", f"{row['lpt']['overall']:.1f}")
    console.print(table)
    for name, values in margins.items():
        console.print(f"{name}: smallest {min(values):+.1f}, mean {sum(values) / len(values):+.1f} "
                      f"over {len(values)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
