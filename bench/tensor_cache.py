"""Tensors cached on disk (backbone features, class-name text embeddings, decoded small images), each beside a
small JSON file with its checksum, shape and dtype. An entry that is missing its JSON, truncated, garbage or of the wrong shape is
reported and recomputed, never used."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import torch

from bench.atomic_io import atomic_torch_save, atomic_write_json, read_json
from bench.errors import first_line


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _describe(tensor: torch.Tensor, data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch.")}


def save_cached(path: Path, tensor: torch.Tensor) -> None:
    """The tensor first, then its checksum file: an entry whose checksum file is missing counts as bad."""
    tensor = tensor.detach().cpu().contiguous()
    atomic_torch_save(path, tensor)
    atomic_write_json(_checksum_path(path), _describe(tensor, path.read_bytes()))


def load_cached(path: Path, expected_shape: tuple[int, ...] | None, warn: Callable[[str], None],
                dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The cached tensor, or None when there is none or it is bad (then `warn` says why, and the caller
    recomputes it). `expected_shape` entries of -1 match any size."""
    if not path.exists():
        return None
    tensor, problem = _read_checked(path, expected_shape, dtype)
    if problem is None:
        return tensor
    warn(f"cache entry {path} is bad ({problem}); recomputing it")
    return None


def _read_checked(path: Path, expected_shape: tuple[int, ...] | None, dtype: torch.dtype
                  ) -> tuple[torch.Tensor | None, str | None]:
    """(the tensor, None) when the entry matches its checksum file and the expected shape, else (None, why).
    The file is read once."""
    try:
        described = read_json(_checksum_path(path))
    except FileNotFoundError:
        return None, "no checksum file: written by an interrupted run or an older version"
    except (OSError, ValueError) as error:
        return None, f"unreadable checksum file: {first_line(error)}"
    data = path.read_bytes()
    if not isinstance(described, dict) or described.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, "checksum mismatch"
    try:
        tensor = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a bad file)
        return None, f"unreadable: {first_line(error)}"
    if not isinstance(tensor, torch.Tensor):
        return None, f"holds a {type(tensor).__name__}, not a tensor"
    if described != _describe(tensor, data):
        return None, f"shape/dtype {list(tensor.shape)} {tensor.dtype} differ from its checksum file"
    if expected_shape is not None and (len(expected_shape) != tensor.dim() or any(
            want not in (-1, got) for want, got in zip(expected_shape, tensor.shape, strict=True))):
        return None, f"shape {list(tensor.shape)}, expected {list(expected_shape)}"
    if tensor.dtype != dtype:
        return None, f"dtype {tensor.dtype}, expected {dtype}"
    return tensor, None
