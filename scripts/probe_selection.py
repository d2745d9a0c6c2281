"""Does the selection rule keep the linear probe near the best its weight-decay grid allows, on a long-tailed
ImageFolder tree whose val is carved from train? The measurement behind issue 25's item 2.

    python scripts/probe_selection.py --cifar ../shared/assets/cifar10-jpg.tar.gz \
        --weights ../shared/assets/vit_tiny_patch16_224.safetensors            # ~5 min on 2 CPU cores

It builds CIFAR-10-LT as a plain `folder` tree (train/: 500 … 10 images per class, exponential profile; no
val/, so the harness carves val from train: 20, 20, 20, 13, 8, 5, 3, 2, 1, 1; test/: 100 per class,
balanced), then for each loss fits the probe at every weight decay of its grid alone (`wd_steps=1`) and prints
val overall, val mean per-class, val balanced NLL, test overall and test few per weight decay, and which weight
decay each rule keeps: the old rule (val overall, ties to the grid's first value), the grid on val with
`selection_metric=overall` and with the default mean per-class (ties to the lower balanced NLL), and the default
(`wd_search=auto`, which cross-validates over train ∪ val on this long-tailed val), each as the harness runs it
over the whole grid. Test is read here only to check the rules; nothing chooses on it.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HEAD, IMBALANCE, CLASSES, TEST_PER_CLASS = 500, 50, 10, 100


def build_tree(source: Path, tree: Path) -> list[int]:
    """train/<class>/ with HEAD·IMBALANCE^(−c/(C−1)) images of class c (the first files in name order) and
    test/<class>/ with TEST_PER_CLASS images, copied from a CIFAR-10 JPEG tree."""
    classes = sorted(path.name for path in (source / "train").iterdir())[:CLASSES]
    counts = [int(HEAD * IMBALANCE ** (-c / (CLASSES - 1))) for c in range(CLASSES)]
    for name, count in zip(classes, counts, strict=True):
        for split, number in (("train", count), ("test", TEST_PER_CLASS)):
            folder = tree / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for image in sorted((source / split / name).glob("*.jpg"))[:number]:
                shutil.copy(image, folder / image.name)
    return counts


def cifar_tree(path: Path, scratch: Path) -> Path:
    if path.is_dir():
        return path
    if not path.is_file():
        raise SystemExit(f"{path} not found: give the CIFAR-10 JPEG tree or its .tar.gz (../shared/assets)")
    with tarfile.open(path) as archive:
        archive.extractall(scratch / "cifar10-jpg", filter="data")
    return scratch / "cifar10-jpg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", type=Path, required=True, help="CIFAR-10 JPEG tree or its .tar.gz")
    parser.add_argument("--weights", required=True, help="ViT-Tiny weights file (safetensors)")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--image-size", default="224")
    parser.add_argument("--losses", nargs="+", default=["ce", "bs"])
    args = parser.parse_args(argv)
    from bench import runner
    from bench.methods.linear_probe import weight_decays

    console, quiet = Console(), Console(quiet=True)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        counts = build_tree(cifar_tree(args.cifar, scratch), scratch / "tree")
        console.print(f"train per class {counts}, test {TEST_PER_CLASS} per class; {args.backbone} at "
                      f"{args.image_size} px")

        def probe(loss: str, **overrides) -> dict:
            spec = runner.RunSpec(method="linear_probe", dataset="folder", data_root=str(scratch / "tree"),
                                  backbone=args.backbone, weights=args.weights, out=str(scratch / "results"),
                                  overrides={"image_size": args.image_size, "loss": loss, **overrides})
            return runner.execute(spec, quiet).record

        for loss in args.losses:
            decays = weight_decays({"wd_max": 0.1, "wd_min": 1e-7, "wd_steps": 13})
            grid = [probe(loss, wd_steps="1", wd_max=repr(float(wd))) for wd in decays]
            val_counts = grid[0]["val_split"]["carve"]
            table = Table(title=f"loss={loss}: each weight decay fitted alone (test shown to check the rules)")
            for column in ("wd", "val overall", "val mean/class", "val bal. NLL", "test overall", "test few"):
                table.add_column(column, justify="right")
            for wd, record in zip(decays, grid, strict=True):
                table.add_row(f"{wd:.3g}", *(f"{record[split][name]:.2f}" for split, name in (
                    ("val", "overall"), ("val", "mean_per_class"), ("val", "nll_balanced"), ("test", "overall"),
                    ("test", "few"))))
            console.print(table)
            console.print(f"val carve: {val_counts}")
            best = max(range(len(grid)), key=lambda i: grid[i]["test"]["overall"])
            old = max(range(len(grid)), key=lambda i: (grid[i]["val"]["overall"], -i))
            lines = [(f"best on the grid (by test, for reference): wd {decays[best]:.3g}, test "
                      f"{grid[best]['test']['overall']:.2f} / few {grid[best]['test']['few']:.2f}"),
                     (f"old rule (val overall, ties to the first): wd {decays[old]:.3g}, test "
                      f"{grid[old]['test']['overall']:.2f} / few {grid[old]['test']['few']:.2f}")]
            for label, overrides in (("on val, selection_metric=overall", {"wd_search": "val",
                                                                            "selection_metric": "overall"}),
                                     ("on val, selection_metric=mean_per_class", {"wd_search": "val"}),
                                     ("default (cross-validated, mean_per_class)", {})):
                record = probe(loss, **overrides)
                probe_fields = record["extras"]  # the probe's own fields (record version 5)
                chosen = (probe_fields["probe_cv"]["chosen"] if probe_fields["wd_search"] == "cv"
                          else np.asarray(probe_fields["weight_decays"])[record["selected"][0]["epoch"]])
                lines.append(f"harness, {label}: wd {chosen:.3g}, test "
                             f"{record['test']['overall']:.2f} / few {record['test']['few']:.2f} "
                             f"({record['test']['overall'] - grid[best]['test']['overall']:+.2f} from the best)")
            console.print("\n".join(lines), highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
