"""What a run ran on: package versions, harness commit, device, split-file hashes, weights provenance."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import torch

from bench.atomic_io import file_sha256

PACKAGES = ("lt-bench", "torch", "torchvision", "timm", "open_clip_torch", "numpy", "polars", "scikit-learn")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> dict[str, object]:
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def build_manifest(*, device: torch.device, amp: str, split_files: list[Path], split_fingerprints: dict[str, str],
                   weights_info: dict, argv: list[str] | None = None) -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_commit(),
        "device": device_description(device),
        "amp": amp,
        "split_files": {str(path): file_sha256(path) for path in split_files},
        "split_fingerprints": split_fingerprints,
        "weights": weights_info,
        "pretrained": weights_info["pretrained"],
        "argv": argv if argv is not None else sys.argv,
    }
