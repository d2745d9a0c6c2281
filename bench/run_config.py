"""`bench run --config FILE`: a run's settings from a file — a run's own `config.json` (an exact re-run: every
resolved hyperparameter and dataset option is pinned, whatever today's defaults are) or a TOML/YAML file
written by hand:

    method = "lpt"
    dataset = "cifar10_lt"
    backbone = "vit_tiny_patch16_224"
    weights = "vit_tiny.safetensors"      # relative paths: relative to the file
    data_root = "data/cifar10-jpg"
    seed = 0
    random_init = false
    [set]
    image_size = 64
    phase1_epochs = 4
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from bench.errors import UsageError, first_line
from bench.hparams import as_override

KEYS = ("method", "dataset", "backbone", "weights", "data_root", "seed", "random_init", "set")


def load_run_config(path: str | Path) -> dict[str, Any]:
    """{method, dataset, backbone, weights, data_root, seed, random_init, overrides} from `path`; keys the file
    does not give are absent. Bad files are one-line errors naming the file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({first_line(error)})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise UsageError(f"--config {path}: use a run's config.json, a .toml or a .yaml file")
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"--config {path}: not valid {path.suffix[1:].upper()} ({first_line(error)})") from None
    except ImportError:
        raise UsageError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table of settings at the top")
    return _from_run(data) if "spec" in data and "hparams" in data else _from_file(data, path)


def _from_run(config: dict) -> dict[str, Any]:
    """A run's config.json: its spec, and every resolved value pinned."""
    spec = config["spec"]
    pinned = {**config.get("dataset_options", {}), **config["hparams"]}
    return {"method": config["method"], "dataset": config["dataset"], "backbone": spec.get("backbone"),
            "weights": spec.get("weights"), "data_root": spec.get("data_root"), "seed": spec.get("seed", 0),
            "random_init": spec.get("allow_random_init", False),
            "overrides": {key: as_override(value) for key, value in pinned.items()}}


def _from_file(data: dict, path: Path) -> dict[str, Any]:
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UsageError(f"--config {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    settings = data.get("set", {})
    if not isinstance(settings, dict) or any(isinstance(v, (dict, list)) for v in settings.values()):
        raise UsageError(f"--config {path}: [set] must be a table of single values (key = value)")
    config = {key: data[key] for key in KEYS[:-1] if key in data}
    for key in ("weights", "data_root"):
        if config.get(key):
            config[key] = str((path.parent / Path(config[key]).expanduser()).resolve())
    config["overrides"] = {key: as_override(value) for key, value in settings.items()}
    return config


def merge_config(config: dict[str, Any], options: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """`options` (a run's settings by option name, `overrides` its --set values) with a --config file's settings
    (`load_run_config`) for those the command line did not give (`given`); --set values override the file's."""
    merged = {name: value if name in given else config.get(name, value) for name, value in options.items()}
    merged["overrides"] = {**config["overrides"], **options["overrides"]}
    return merged
