"""bf16 against fp32 on the same runs, side by side: accuracy and time of each pair.

    python scripts/precision_parity.py --data-root DIR                   # CIFAR-10-LT, ViT-Tiny, 32 px
    python scripts/precision_parity.py --data-root DIR --image-size 112 --methods linear_probe,lpt \\
        --set phase1_epochs=1 --set phase2_epochs=1

Each method runs twice through the harness (`amp=off`, then `amp=bf16`), same seed, data, weights and
settings; features are cached per precision, so each run computes its own. On a CPU without bf16
instructions bf16 is emulated (the runs say so): the accuracy comparison holds, the timing does not.
Runs go to --out (default: results/parity); the table is printed at the end.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from bench import runner


def number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="cifar10_lt")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--weights", default=None, help="backbone weights file (default: resolved as `bench run`)")
    parser.add_argument("--image-size", default="32")
    parser.add_argument("--methods", default="linear_probe,lpt")
    parser.add_argument("--set", dest="assignments", action="append",
                        default=["phase1_epochs=1", "phase2_epochs=0", "warmup_epochs=0"],
                        help="KEY=VALUE for every run, after the defaults (one LPT epoch without warm-up: "
                             "phase1_epochs=1 phase2_epochs=0 warmup_epochs=0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/parity")
    args = parser.parse_args()

    console = Console(width=150)
    table = Table(title=f"fp32 vs bf16, {args.dataset} at {args.image_size} px, {args.backbone}, seed {args.seed}")
    for column in ("method", "precision", "test overall", "many", "medium", "few", "val overall", "train s",
                   "wall s", "note"):
        table.add_column(column, justify="left" if column in ("method", "precision", "note") else "right")
    for method in args.methods.split(","):
        from bench.hparams import parse_assignments
        from bench.options import declared_options

        declared = declared_options(method, args.dataset)
        pins = {k: v for k, v in parse_assignments(args.assignments).items() if k in declared}
        for amp in ("off", "bf16"):
            spec = runner.RunSpec(method=method, dataset=args.dataset, backbone=args.backbone, weights=args.weights,
                                  data_root=args.data_root, seed=args.seed, out=args.out,
                                  overrides={**pins, "image_size": args.image_size, "amp": amp})
            record = runner.execute(spec, console).record
            test, val = record["test"], record["val"]
            emulated = any("emulated" in note for note in record["notes"])
            table.add_row(method, record["precision"], *(number(test[k]) for k in ("overall", "many", "medium", "few")),
                          number(val["overall"]), f"{record['train_time_s']:.0f}", f"{record['wall_time_s']:.0f}",
                          "bf16 emulated (no bf16 instructions)" if emulated else "")
    console.print(table)


if __name__ == "__main__":
    main()
