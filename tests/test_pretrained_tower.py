"""The micro tower shipped with the package (vit_micro.fmnist): it loads offline with its provenance, refuses a
file that is not the one its provenance describes, and the script that made it runs on IDX files (a tiny set here,
Debian's Fashion-MNIST when installed)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import backbones
from bench.backbones import create_backbone
from bench.errors import BenchError

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pretrain_script():
    spec = importlib.util.spec_from_file_location("pretrain_micro_tower", REPO / "scripts" / "pretrain_micro_tower.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_tower_loads_with_its_provenance():
    tower = create_backbone("vit_micro.fmnist")
    info = tower.weights_info
    assert info.pretrained and info.source == "shipped" and Path(info.location).parent == backbones.SHIPPED
    provenance = info.provenance
    assert provenance["sha256"] == info.sha256 == hashlib.sha256(Path(info.location).read_bytes()).hexdigest()
    assert provenance["data"]["name"] == "Fashion-MNIST" and provenance["data"]["licence"] == "MIT"
    assert provenance["recipe"]["seed"] == 0 and provenance["recipe"]["epochs"] >= 1
    assert provenance["test_accuracy"] > 80  # a tower that learned its own task (10 classes)
    assert provenance["script"] == "scripts/pretrain_micro_tower.py" and len(provenance["commit"]) == 40
    assert not provenance["script_differs_from_commit"]
    assert Path(info.location).stat().st_size < 2_000_000
    assert tower.image_size == provenance["image_size"] == 16 and tower.mean == (0.5,) * 3
    reference = create_backbone("vit_micro", allow_random_init=True, image_size=16)
    assert sum(p.numel() for p in tower.parameters()) == sum(p.numel() for p in reference.parameters())
    larger = create_backbone("vit_micro.fmnist", image_size=32)  # position embeddings resampled
    assert larger(torch.zeros(1, 3, 32, 32)).shape == (1, 64)


def test_shipped_weights_that_do_not_match_their_provenance_are_refused(tmp_path, monkeypatch):
    shipped = tmp_path / "pretrained"
    shutil.copytree(backbones.SHIPPED, shipped)
    monkeypatch.setattr(backbones, "SHIPPED", shipped)
    weights = shipped / "vit_micro_fmnist.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    with pytest.raises(BenchError, match="is not the file its provenance .* describes .*pretrain_micro_tower.py"):
        create_backbone("vit_micro.fmnist")
    (shipped / "vit_micro_fmnist.json").unlink()
    with pytest.raises(BenchError, match=r"shipped weights are incomplete, .*vit_micro_fmnist.json is missing"):
        create_backbone("vit_micro.fmnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_the_pretraining_script_writes_a_loadable_tower_and_its_provenance(tmp_path, capsys):
    script = pretrain_script()
    rng = np.random.RandomState(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for split, n in (("train", 96), ("t10k", 40)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", rng.randint(0, 10, n))
    out = tmp_path / "out"
    assert script.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32"]) == 0
    provenance = json.loads((out / "vit_micro_fmnist.json").read_text())
    assert provenance["data"]["train_images"] == 96 and len(provenance["history"]) == 1
    assert provenance["sha256"] == hashlib.sha256((out / "vit_micro_fmnist.safetensors").read_bytes()).hexdigest()
    tower = create_backbone("vit_micro", weights=str(out / "vit_micro_fmnist.safetensors"), image_size=16)
    assert tower.weights_info.pretrained
    assert "test accuracy" in capsys.readouterr().out


def test_the_pretraining_script_says_how_to_get_fashion_mnist(tmp_path):
    with pytest.raises(SystemExit, match="Fashion-MNIST not found: .* apt-get install -y dataset-fashion-mnist"):
        pretrain_script().main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_shipped_tower_was_made_from_debians_fashion_mnist():
    if not FASHION_MNIST.is_dir():
        pytest.skip(f"{FASHION_MNIST} is absent (apt-get install dataset-fashion-mnist)")
    files = json.loads((backbones.SHIPPED / "vit_micro_fmnist.json").read_text())["data"]["files"]
    for name, digest in files.items():
        assert hashlib.sha256((FASHION_MNIST / name).read_bytes()).hexdigest() == digest, name
