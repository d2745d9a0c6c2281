"""Mini-benchmark on a real long-tailed dataset that runs on a CPU: CIFAR-10-LT (imbalance factor 100) built from
the shared CIFAR-10 JPEG tree, with the shared ImageNet-pretrained ViT-Tiny as backbone.

    python scripts/cifar10_lt_benchmark.py [--methods linear_probe,finetune,...] [--epochs 1] [--image-size 112]

Reads ../shared/assets (or --archive / --weights); extracts the archive once into --cache. Every method is an
ordinary `bench run` (run folder + record in --out). Prints one table of the latest run of each method in --out
with these settings: overall / many / medium / few / worst class on test, post-hoc logit-adjusted accuracy,
trainable parameters and training time. LPT++ runs take their CLIP expert from --vl-backbone (a tiny random-init
CLIP unless --vl-weights is given: no CLIP weights exist offline here; the table says which towers were random).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from bench.methods.base import METHODS
from rich.console import Console
from rich.table import Table

from bench.runner import RunSpec, declared_options, execute
from bench.store import ResultsStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets"
DEFAULT_METHODS = "linear_probe,finetune,la,bs,crt,vpt_deep,adaptformer"
FEATURE_METHODS = ("linear_probe",)


def is_epoch_count(key: str) -> bool:
    """The epoch counts of a method's phases (`epochs`, `phase1_epochs`, `adapter_epochs`, ...), not warm-up."""
    return key == "epochs" or (key.endswith("_epochs") and key != "warmup_epochs")


BENCHMARK_TAG = "cifar10_lt_mini"
SHOWN = ("overall", "many", "medium", "few", "worst_class")


def extracted(archive: Path, cache: Path) -> Path:
    root = cache / "cifar10-jpg"
    if not (root / "test").is_dir():
        if not archive.is_file():
            raise SystemExit(f"missing {archive}: pass --archive PATH to cifar10-jpg.tar.gz")
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--archive", type=Path, default=SHARED / "cifar10-jpg.tar.gz")
    parser.add_argument("--weights", type=Path, default=SHARED / "vit_tiny_patch16_224.safetensors")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lt-bench")
    parser.add_argument("--out", default="results/cifar10_lt_benchmark")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every image-based method")
    parser.add_argument("--image-size", type=int, default=112, help="input resolution (ViT-Tiny is native 224)")
    parser.add_argument("--imbalance-factor", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vl-backbone", default="clip_micro",
                        help="CLIP tower of the LPT++ visual-language expert (lptpp_vl: its only tower); no CLIP "
                             "weights are available offline, so by default a tiny random-init CLIP (recorded)")
    parser.add_argument("--vl-weights", default="", help="weights file for --vl-backbone (empty: random init)")
    args = parser.parse_args()
    if not args.weights.is_file():
        raise SystemExit(f"missing {args.weights}: pass --weights PATH to vit_tiny_patch16_224.safetensors")
    data = extracted(args.archive, args.cache)
    console = Console() if sys.stdout.isatty() else Console(width=170)  # a log keeps the table unwrapped
    records = []
    for method in args.methods.split(","):
        overrides = {"image_size": str(args.image_size), "imbalance_factor": str(args.imbalance_factor),
                     "augment": "crop_flip"}
        if method not in FEATURE_METHODS:  # cheap heads on cached features keep their defaults
            declared = declared_options(method, "cifar10_lt")
            overrides.update({key: str(args.epochs) for key in declared if is_epoch_count(key)})
            overrides["warmup_epochs"] = "0"  # a 1-epoch run must not spend its only epoch warming up
        backbone, weights = "vit_tiny_patch16_224", str(args.weights)
        if "vl_backbone" in declared_options(method, "cifar10_lt"):
            overrides.update({"vl_backbone": args.vl_backbone, "vl_weights": args.vl_weights})
        if getattr(METHODS.get(method), "experts", None) == ("vl",):
            backbone, weights = args.vl_backbone, args.vl_weights or None
        console.rule(f"{method}")
        spec = RunSpec(method=method, dataset="cifar10_lt", backbone=backbone, weights=weights,
                       data_root=str(data), overrides=overrides, seed=args.seed, out=args.out,
                       allow_random_init=not args.vl_weights, tags={"benchmark": BENCHMARK_TAG})
        execute(spec, console)
    records = benchmark_records(args)
    table = Table(title=f"CIFAR-10-LT IF{args.imbalance_factor:g}, ViT-Tiny (ImageNet) at {args.image_size} px, "
                        f"seed {args.seed}, {args.epochs} epoch(s) per phase: test accuracy (%) — latest run of "
                        f"each method in {args.out}")
    for column in ("method", *SHOWN, "post-hoc LA: overall / medium / few", "trainable", "train s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in records:
        posthoc = r["posthoc"]["test"]
        table.add_row(r["method"], *(_pct(r["test"][k]) for k in SHOWN),
                      " / ".join(_pct(posthoc[k]) for k in ("overall", "medium", "few"))
                      + f" (τ={r['posthoc']['tau']:.1f})",
                      f"{r['trainable_params']:,}", f"{r['train_time_s']:.0f}")
    console.print(table)
    for r in records:
        random = [e["name"] for e in r.get("experts", []) if not e["pretrained"]] or ([] if r["pretrained"]
                                                                                       else ["backbone"])
        if random:
            console.print(f"{r['method']}: randomly initialised {', '.join(random)} (pretrained: false)")
    console.print("– : empty shot group (CIFAR-10-LT IF100 has no class with fewer than 20 training images, so "
                  "its tail is the medium group and the worst class)")


def benchmark_records(args) -> list[dict]:
    """The latest record per method in the store with this benchmark's settings (earlier invocations
    included, so methods run separately appear in one table)."""
    latest: dict[str, dict] = {}
    for record in sorted(ResultsStore(Path(args.out).resolve()).records(), key=lambda r: r["finished_at"]):
        hp, options = record["hparams"], record["dataset_options"]
        same_setting = (record.get("tags", {}).get("benchmark") == BENCHMARK_TAG and record["seed"] == args.seed
                        and hp.get("image_size") == args.image_size
                        and options.get("imbalance_factor") == args.imbalance_factor)
        same_epochs = record["method"] in FEATURE_METHODS or all(v == args.epochs for k, v in hp.items()
                                                                 if is_epoch_count(k))
        if same_setting and same_epochs:
            latest[record["method"]] = record
    order = {name: i for i, name in enumerate(METHODS.names())}
    return sorted(latest.values(), key=lambda r: order.get(r["method"], len(order)))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
