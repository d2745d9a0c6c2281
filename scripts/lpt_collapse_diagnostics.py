"""Why does LPT's phase 1 call every image one class in its first epochs? Per-epoch diagnostics of the shared-prompt
phase on CIFAR-10-LT, for the shipped recipe and the variants that take one ingredient away (issue 26, item 2).

    python scripts/lpt_collapse_diagnostics.py --cifar ../shared/assets/cifar10-jpg.tar.gz \
        --weights ../shared/assets/vit_tiny_patch16_224.safetensors --image-size 64      # ~25 min on 2 cores

Data: CIFAR-10-LT, imbalance factor 100 over a 500-image head (`head_images=500`: 500 … 5 images per class, 1,236
in all), 20 val images per class from the images the profile leaves unused (never test), the balanced test set.
Model: ImageNet ViT-Tiny/16, frozen, LPT phase 1 only (`phase2_epochs=0`), batch 64, fp32, seed 0, the official
per-epoch warm-up (`warmup_per=epoch`) unless the variant changes it.

Per epoch it records, from the run itself (the harness's engine trains; this script only listens):
- val accuracy per class and the share of val predictions per class;
- the mean norm of the shared prompt tokens, and how alike the val features are (|mean unit feature|², about the
  mean cosine between two images' features: near 1 when the features no longer depend on the image);
- the logits' decomposition on val (logit = s · cosine, s = agcl_scale): the per-class bias b_c (the class's mean
  logit over all val images, the part that does not depend on the image), its spread max b − min b, and the mean
  margin of the true class over the best other class; the mean L2 norm of the logit vector and of the feature;
- each loss term, for the class-aware and the uniform batch separately: the loss as trained, the same loss with
  the Gaussian cloud removed and with the margin removed (their differences are the cloud's and the margin's
  parts), the plain cross-entropy of the logits the test sees, the mean focal weight of the target,
  (1 − p_y)^γ+, and the summed focal weight of the other classes, Σ p_j^γ−, and the batch's accuracy.

Each variant's figures go to OUT/<image size>px/<variant>.json (a finished variant is not re-run: the script is
resumable); the tables are printed and `--summary` prints the transient per variant from the JSON files: the
steps until val mean per-class accuracy first reaches twice chance with no class taking over half the
predictions. Test is read once per run, as the harness does, for the final row only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from bench.callbacks import Callback
from bench.datasets.longtail import exponential_profile
from bench.methods.agcl import AGCLoss, asymmetric_focal, gaussian_cloud
from bench.methods.lpt import LPT, ib_weight

CHANCE_MULTIPLE = 2.0  # the transient ends when val mean per-class reaches this multiple of chance ...
MAX_SHARE = 0.5  # ... and no class takes more than this share of the val predictions
# warmup_per=epoch: the official per-epoch schedule, which every variant but warmup_per_iteration keeps (LPT's
# default became per-iteration after this measurement)
IMBALANCE = 100.0
BASE = {"head_images": 500, "imbalance_factor": IMBALANCE, "source": "folder", "batch_size": 64, "phase2_epochs": 0, "amp": "off",
        "warmup_per": "epoch"}
VARIANTS = {  # name → (method, settings over BASE)
    "shipped": ("lpt", {}),
    "ce": ("lpt_ce", {}),
    "no_dual": ("lpt", {"ib_weight": 0.0}),
    "no_cloud": ("lpt", {"agcl_cloud": 0.0}),
    "lr_x0.2": ("lpt", {"lr": 0.004}),
    "lr_x5": ("lpt", {"lr": 0.1}),
    "no_warmup": ("lpt", {"warmup_epochs": 0}),
    "no_warmup_no_cloud": ("lpt", {"warmup_epochs": 0, "agcl_cloud": 0.0}),
    "warmup_per_iteration": ("lpt", {"warmup_per": "iteration"}),
    # the shipped recipe with SGD's momentum buffers emptied when the warm-up ends (a test of what the 1e-6 epoch
    # leaves behind: the only state it changes is the momentum, charged with gradients at the initial weights)
    "momentum_reset": ("lpt", {}),
    "crop_flip": ("lpt", {"augment": "crop_flip"}),  # a padded random crop, as CIFAR recipes use
    "no_augment": ("lpt", {"augment": "none"}),
    "crop_flip_ce": ("lpt_ce", {"augment": "crop_flip"}),
}


class LossTerms:
    """Wraps one of LPT's two losses: returns exactly what it would (the same cloud draw from the same random
    stream), and records its terms for the epoch."""

    def __init__(self, kind: str, loss, sink: dict[str, list[dict]]):
        self.kind, self.loss, self.sink = kind, loss, sink

    def __call__(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        agcl = isinstance(self.loss, AGCLoss)
        cloud = (gaussian_cloud(cosine.shape, device=cosine.device)
                 if agcl and self.loss.noise and self.loss.cloud > 0 else None)
        value = self.loss(cosine, labels, cloud=cloud) if agcl else self.loss(cosine, labels)
        with torch.no_grad():
            self.sink.setdefault(self.kind, []).append(self.terms(cosine.detach().float(), labels, cloud, value))
        return value

    def terms(self, cosine: torch.Tensor, labels: torch.Tensor, cloud, value: torch.Tensor) -> dict:
        scale = self.loss.scale
        row = {"loss": value.item(), "ce_test_logits": F.cross_entropy(scale * cosine, labels).item(),
               "batch_acc": (cosine.argmax(1) == labels).float().mean().item() * 100}
        if not isinstance(self.loss, AGCLoss):
            return row
        loss, gp, gn = self.loss, self.loss.gamma_pos, self.loss.gamma_neg
        no_cloud = loss(cosine, labels, cloud=torch.zeros_like(cosine))
        clouded = cosine if cloud is None else cosine - loss.cloud * cloud * loss._offsets(cosine)
        no_margin = asymmetric_focal(scale * clouded, labels, gp, gn, loss.smoothing)
        p = F.softmax(loss.adjusted_logits(cosine, labels, cloud), dim=1)
        target = F.one_hot(labels, p.shape[1]).bool()
        p_y = p[target]
        others = torch.where(target, torch.zeros_like(p), p).pow(gn).sum(1)
        shift = torch.zeros_like(cosine) if cloud is None else scale * loss.cloud * cloud * loss._offsets(cosine)
        return {**row, "cloud_part": (value - no_cloud).item(), "margin_part": (value - no_margin).item(),
                "target_weight": (1 - p_y).pow(gp).mean().item(), "others_weight": others.mean().item(),
                "cloud_shift_rarest": shift[:, -1].mean().item()}


def val_terms(logits: np.ndarray, labels: np.ndarray, features: np.ndarray, scale: float, prompt_norm: float
              ) -> dict:
    """Per-class accuracy and prediction shares, and the bias/margin decomposition of the val logits."""
    z = scale * logits
    classes = z.shape[1]
    predicted = z.argmax(1)
    per_class = [float((predicted[labels == c] == c).mean() * 100) for c in range(classes)]
    shares = np.bincount(predicted, minlength=classes) / len(predicted)
    bias = z.mean(0)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    true = z[np.arange(len(z)), labels]
    others = np.where(np.eye(classes, dtype=bool)[labels], -np.inf, z).max(1)
    return {"per_class_acc": per_class, "mean_per_class": float(np.mean(per_class)),
            "pred_share": shares.round(3).tolist(), "top_share": float(shares.max()),
            "top_class": int(shares.argmax()), "bias": bias.round(3).tolist(),
            "bias_spread": float(bias.max() - bias.min()), "bias_argmax": int(bias.argmax()),
            "true_margin": float((true - others).mean()), "logit_norm": float(np.linalg.norm(z, axis=1).mean()),
            "feature_norm": float(np.linalg.norm(features, axis=1).mean()),
            # |mean unit feature|² ≈ the mean cosine between two images' features: 1 when every image looks alike
            "feature_alignment": float(np.square(np.linalg.norm(unit.mean(0)))), "prompt_norm": prompt_norm}


class Listener(Callback):
    """Collects one row per epoch from the wrapped losses and the engine's val pass."""

    def __init__(self):
        self.method = None
        self.steps: dict[str, list[dict]] = {}
        self.val: tuple | None = None
        self.features: list[torch.Tensor] = []
        self.epochs: list[dict] = []

    def attach(self, method: LPT) -> None:
        self.method = method
        method.losses = {kind: LossTerms(kind, loss, self.steps) for kind, loss in method.losses.items()}
        predict = method.predict

        def listened(split: str):
            hook = method.net.head.register_forward_hook(
                lambda _module, inputs, _out: self.features.append(inputs[0].detach().float().cpu()))
            try:
                logits, labels = predict(split)
            finally:
                hook.remove()
            if split == "val":
                self.val = (logits.numpy(), labels.numpy(), torch.cat(self.features).numpy())
            self.features = []
            return logits, labels

        method.predict = listened

    def on_epoch_end(self, entry: dict, run_dir: Path) -> None:
        hp = self.method.hp
        row = {"epoch": entry["epoch"], "lr": entry["lr"], "loss": entry["loss"], "steps": 0,
               "eta": ib_weight(hp["ib_weight"], entry["epoch"] - 1, hp["phase1_epochs"])}
        for kind, rows in self.steps.items():
            row["steps"] = len(rows)
            row[kind] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
        if self.val is not None:
            prompts = self.method.net.shared_prompts.detach()
            row["val"] = val_terms(*self.val, hp["agcl_scale"], float(prompts.norm(dim=-1).mean()))
        self.epochs.append(row)
        self.steps.clear()


def reset_momentum_after_warmup(original):
    """Engine._warmup_step wrapped: before the first step after the warm-up, every momentum buffer is emptied."""

    def step(phase, optimizer, epoch: int, index: int, total) -> None:
        if epoch == phase.warmup_epochs and index == 0:
            for state in optimizer.state.values():
                state.pop("momentum_buffer", None)
        original(phase, optimizer, epoch, index, total)

    return staticmethod(step)


def run_variant(name: str, tree: Path, args, store: Path) -> dict:
    from bench.api import run
    from bench.engine import Engine

    method, settings = VARIANTS[name]
    listener = Listener()
    original, warmup_step = LPT.setup, Engine.__dict__["_warmup_step"]

    def setup(self) -> None:
        original(self)
        listener.attach(self)

    LPT.setup = setup
    if name == "momentum_reset":
        Engine._warmup_step = reset_momentum_after_warmup(warmup_step.__func__)
    try:
        result = run(method, "cifar10_lt", backbone=args.backbone, weights=args.weights, data_root=str(tree),
                     settings={**BASE, "image_size": args.image_size, "phase1_epochs": args.epochs,
                               **settings}, seed=args.seed, out=str(store),
                     callbacks=[listener], console=Console(quiet=True))
    finally:
        LPT.setup, Engine._warmup_step = original, warmup_step
    record = result.record
    return {"variant": name if args.seed == 0 else f"{name}-s{args.seed}", "seed": args.seed, "method": method, "settings": {**BASE, **settings}, "image_size": args.image_size,
            "epochs": listener.epochs, "run_id": record["run_id"], "device": record["device"], "threads": record["threads"],
            "precision": record["precision"],
            "test": {key: record["test"].get(key) for key in ("overall", "mean_per_class", "many", "medium", "few")},
            "health": record.get("health", [])}


def transient(figures: dict) -> tuple[int | None, int]:
    """(steps until the transient ended, or None if it never did within the budget; steps per epoch)."""
    steps_per_epoch = figures["epochs"][0]["steps"] or 1
    for row in figures["epochs"]:
        val = row.get("val")
        if val and val["mean_per_class"] >= CHANCE_MULTIPLE * 100 / len(val["per_class_acc"]) \
                and val["top_share"] <= MAX_SHARE:
            return row["epoch"] * steps_per_epoch, steps_per_epoch
    return None, steps_per_epoch


def epoch_table(figures: dict) -> Table:
    table = Table(title=f"{figures['variant']} ({figures['method']}, {figures['image_size']} px): test "
                        f"{figures['test']['overall']:.1f} (many/medium/few {figures['test']['many']:.1f} / "
                        f"{figures['test']['medium']:.1f} / {figures['test']['few']:.1f})")
    for column in ("ep", "lr", "loss", "cb loss", "cloud", "margin", "ce(test z)", "ib loss", "η", "val mpc",
                   "top class (share)", "bias argmax", "bias spread", "true margin", "|z|", "|f|", "f alike", "|prompt|"):
        table.add_column(column, justify="right")
    for row in figures["epochs"]:
        cb, ib, val = row.get("class_balanced", {}), row.get("instance_balanced", {}), row.get("val", {})

        def f(source: dict, key: str, digits: int = 2) -> str:
            value = source.get(key)
            return "—" if value is None else f"{value:.{digits}f}"

        table.add_row(str(row["epoch"]), f"{row['lr']:.2g}", f(row, "loss"), f(cb, "loss"), f(cb, "cloud_part"),
                      f(cb, "margin_part"), f(cb, "ce_test_logits"), f(ib, "loss"), f(row, "eta"),
                      f(val, "mean_per_class", 1), f"{val.get('top_class', '—')} ({val.get('top_share', 0):.2f})",
                      str(val.get("bias_argmax", "—")), f(val, "bias_spread"), f(val, "true_margin"),
                      f(val, "logit_norm", 1), f(val, "feature_norm", 1), f(val, "feature_alignment"),
                      f(val, "prompt_norm"))
    return table


def summary(folder: Path, console: Console) -> None:
    table = Table(title=f"The transient per variant ({folder.name}): steps until val mean per-class ≥ "
                        f"{CHANCE_MULTIPLE:g}× chance with no class over {MAX_SHARE:.0%} of the predictions")
    for column in ("variant", "steps/epoch", "transient (steps)", "best val mpc (epoch)",
                   "there: val many / medium / few", "1st full-rate epoch: top share", "its train CE (test logits)",
                   "train CE at 1e-6"):
        table.add_column(column, justify="right")
    for path in sorted(folder.glob("*.json")):
        figures = json.loads(path.read_text())
        length, per_epoch = transient(figures)
        rows = [r for r in figures["epochs"] if r.get("val")]
        best = max(rows, key=lambda r: r["val"]["mean_per_class"])
        first = first_full_rate_epoch(figures)
        table.add_row(figures["variant"], str(per_epoch), f"> {len(figures['epochs']) * per_epoch}"
                      if length is None else str(length), f"{best['val']['mean_per_class']:.1f} ({best['epoch']})",
                      " / ".join(f"{value:.0f}" for value in val_groups(best["val"]["per_class_acc"])),
                      f"{first['val']['top_share']:.2f} ({first['epoch']})",
                      f"{first['class_balanced']['ce_test_logits']:.2f}", initial_ce(figures))
    console.print(table)
    console.print("The train CE is the plain cross-entropy of s·cosine (the logits the test sees) on the class-aware "
                  "batches, averaged over the epoch; \"at 1e-6\" is the warm-up epoch's, where the weights have not "
                  "moved (— where the first epoch trains).")


def val_groups(per_class: list[float]) -> tuple[float, float, float]:
    """Mean val accuracy of the many / medium / few-shot classes of this script's CIFAR-10-LT (standard groups:
    over 100, 20–100 and under 20 training images)."""
    counts = np.asarray(exponential_profile(BASE["head_images"], len(per_class), IMBALANCE))
    accuracy = np.asarray(per_class)
    return tuple(float(accuracy[group].mean()) for group in (counts > 100, (counts >= 20) & (counts <= 100),
                                                               counts < 20))


def initial_ce(figures: dict) -> str:
    """The class-aware batches' CE during a warm-up epoch held at 1e-6: the initial weights' (else —)."""
    first = figures["epochs"][0]
    return f"{first['class_balanced']['ce_test_logits']:.2f}" if first["lr"] <= 1e-5 else "—"


def first_full_rate_epoch(figures: dict) -> dict:
    """The first epoch trained at more than a warm-up's 1e-6 for its whole length."""
    return next(row for row in figures["epochs"] if row["lr"] > 1e-5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", type=Path, help="CIFAR-10 JPEG tree (train/, test/) or its .tar.gz")
    parser.add_argument("--weights", help="ViT-Tiny weights file (safetensors)")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10, help="phase 1 epochs (default 10)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/diagnostics/lpt_collapse"))
    parser.add_argument("--summary", action="store_true", help="only print the summary of the finished variants")
    args = parser.parse_args(argv)
    console = Console(width=200)
    folder = args.out / f"{args.image_size}px"
    if args.summary:
        summary(folder, console)
        return 0
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")
    if args.cifar is None or args.weights is None:
        parser.error("--cifar and --weights are needed to run (../shared/assets has both)")
    if not args.cifar.exists() or not Path(args.weights).is_file():
        console.print(f"skipped: {args.cifar} or {args.weights} is absent (../shared/assets holds both)")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tree = args.cifar
        if not tree.is_dir():
            import tarfile

            with tarfile.open(tree) as archive:
                archive.extractall(Path(scratch) / "cifar10-jpg", filter="data")
            tree = Path(scratch) / "cifar10-jpg"
        for name in args.variants.split(","):
            path = folder / (f"{name}.json" if args.seed == 0 else f"{name}-s{args.seed}.json")
            if path.exists():
                console.print(f"{name}: done before ({path}); delete it to run again")
                continue
            figures = run_variant(name, tree, args, args.out / "store")
            path.write_text(json.dumps(figures, indent=1))
            console.print(epoch_table(figures))
    summary(folder, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
