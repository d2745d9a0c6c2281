"""Pretrain the micro ViT that the embedded default ships with (`vit_micro.fmnist`), on Fashion-MNIST, on a CPU.

    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist   # Debian/Ubuntu; MIT licence
    python scripts/pretrain_micro_tower.py                                 # ~5 min on 2 CPU cores

writes bench/pretrained/vit_micro_fmnist.safetensors (the backbone without its classifier) and
bench/pretrained/vit_micro_fmnist.json (its provenance: data, licence, seed, recipe, test accuracy, this
script's hash and the commit it ran at). The tower is `vit_micro`'s architecture, trained at the embedded
default's resolution (16 px), with Fashion-MNIST's grey images repeated over three channels and normalised as the
harness normalises the tower's images (mean 0.5, std 0.5). Digits, the embedded dataset, are never seen.

Fashion-MNIST: Xiao, Rasul and Vollgraf (2017), https://github.com/zalandoresearch/fashion-mnist, MIT licence;
Debian ships it as the package dataset-fashion-mnist (files under /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
INSTALL = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
MEAN, STD = 0.5, 0.5  # what the harness normalises vit_micro's images with (timm's default for a cfg-less ViT)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format: magic, dimension sizes, then uint8 data), gzipped."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise SystemExit(f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(root: Path) -> dict[str, np.ndarray]:
    missing = [name for name in FILES.values() if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"Fashion-MNIST not found: {', '.join(missing)} missing under {root}; install it with "
                         f"`{INSTALL}`, or pass --data DIR holding the four IDX files")
    return {key: read_idx(root / name) for key, name in FILES.items()}


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """[N, 28, 28] uint8 → [N, 3, size, size] normalised, resized antialiased (bicubic, the tower's filter) and
    rounded to uint8 first, as the harness's transform does."""
    pixels = torch.from_numpy(images.copy()).unsqueeze(1).float()
    pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).round().clamp(0, 255)
    return ((pixels / 255 - MEAN) / STD).repeat(1, 3, 1, 1)


def shift(batch: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero-padded crops), one offset per image."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (pad,) * 4, value=-MEAN / STD)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 3, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 3, h, w)
    padded = padded.gather(2, rows)
    return padded.gather(3, cols)


def accuracy(tower, head, images: torch.Tensor, labels: torch.Tensor) -> float:
    tower.eval()
    with torch.no_grad():
        correct = sum((head(tower(images[i:i + 1000])).argmax(1) == labels[i:i + 1000]).sum().item()
                      for i in range(0, len(images), 1000))
    return 100 * correct / len(images)


def git_commit() -> tuple[str | None, bool]:
    """(HEAD, whether this script differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(Path(__file__).resolve())], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return head, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"Fashion-MNIST's IDX files ({DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "pretrained", help="where the tower goes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=16, help="the embedded default's resolution")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (cosine, 1 epoch warm-up)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--shift", type=int, default=1, help="random translation, pixels at the trained size")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    from bench.atomic_io import file_sha256
    from bench.backbones import create_backbone
    data = load(args.data)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, test_x = to_tensor(data["train_images"], args.image_size), to_tensor(data["test_images"],
                                                                                   args.image_size)
    train_y, test_y = (torch.from_numpy(data[k].astype(np.int64)) for k in ("train_labels", "test_labels"))
    tower = create_backbone("vit_micro", allow_random_init=True, image_size=args.image_size)
    head = torch.nn.Linear(tower.feature_dim, 10)
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    print(f"pretraining vit_micro ({sum(p.numel() for p in tower.parameters()):,} parameters) on Fashion-MNIST "
          f"({len(train_x):,} train, {len(test_x):,} test) at {args.image_size} px, {args.epochs} epochs, "
          f"seed {args.seed}, {torch.get_num_threads()} threads", flush=True)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        tower.train()
        order = torch.randperm(len(train_x), generator=generator)
        running = 0.0
        for i in range(0, len(order), args.batch_size):
            index = order[i:i + args.batch_size]
            batch = train_x[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            if args.shift:
                batch = shift(batch, args.shift, generator)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(head(tower(batch)), train_y[index], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(index)
            step += 1
        test_acc = accuracy(tower, head, test_x, test_y)
        history.append({"epoch": epoch + 1, "train_loss": round(running / len(order), 4),
                        "test_acc": round(test_acc, 2), "elapsed_s": round(time.perf_counter() - start, 1)})
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {running / len(order):.4f}, test {test_acc:.2f} %, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "vit_micro_fmnist.safetensors"
    state = {k: v.detach().contiguous() for k, v in tower.model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    commit, dirty = git_commit()
    provenance = {
        "backbone": "vit_micro.fmnist", "architecture": "vit_micro (timm VisionTransformer: patch 4, width 64, "
        "depth 4, 4 heads)", "image_size": args.image_size, "normalisation": {"mean": MEAN, "std": STD},
        "file": weights.name, "sha256": file_sha256(weights), "parameters": sum(v.numel() for v in state.values()),
        "data": {"name": "Fashion-MNIST", "reference": "Xiao, Rasul, Vollgraf (2017), arXiv:1708.07747",
                 "licence": "MIT", "obtained_from": f"Debian package dataset-fashion-mnist ({INSTALL})",
                 "train_images": len(train_x), "test_images": len(test_x),
                 "files": {name: file_sha256(args.data / name) for name in FILES.values()}},
        "recipe": {"seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "adamw",
                   "lr": args.lr, "schedule": "1 epoch linear warm-up, then cosine to 0",
                   "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
                   "augmentation": f"horizontal flip, random shift up to {args.shift} px", "head": "linear, "
                   "on the class token, discarded"},
        "test_accuracy": round(history[-1]["test_acc"], 2) if history else None,
        "history": history, "wall_time_s": round(wall, 1),
        "script": "scripts/pretrain_micro_tower.py", "script_sha256": file_sha256(Path(__file__).resolve()),
        "commit": commit, "script_differs_from_commit": dirty,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (args.out / "vit_micro_fmnist.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"test accuracy {provenance['test_accuracy']} % after {args.epochs} epochs, {wall:.0f} s; wrote {weights} "
          f"({weights.stat().st_size / 1e6:.2f} MB) and its provenance {weights.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
