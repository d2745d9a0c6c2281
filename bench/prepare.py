"""A run prepared in one place: `prepare_run(spec)` resolves the embedded preset, the options, the device and the
world, the results root and run folder, the dataset, the backbone and the precision, before anything is written
into the run folder, into the run's immutable `RunContext`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

import bench.datasets
import bench.methods  # noqa: F401  (registers the methods)
from bench.backbones import BackboneRequest, open_backbone, parse_backbone
from bench.context import RunContext, warn
from bench.datasets.base import DATASETS, load_dataset
from bench.distributed import World, join
from bench.embedded import EMBEDDED_DATASET, EMBEDDED_PRESET, is_embedded
from bench.errors import BenchError, UsageError
from bench.hardware import amp_dtype, pick_device
from bench.hparams import resolve
from bench.methods.base import METHODS
from bench.options import CommonOptions, declared_options
from bench.run_folder import RESULTS_ENV, RunFolder, new_run_id, results_root
from bench.run_spec import RunSpec
from bench.seeding import seed_everything
from bench.trackers import check_trackers

DEFAULT_BACKBONE = "vit_base_patch16_224.augreg_in21k"


def prepare_run(spec: RunSpec, console: Console | None = None, run_dir: Path | None = None) -> RunContext:
    """The context of the run `spec` asks for (in `run_dir`: resuming an interrupted run), every choice made;
    a run that cannot start fails here, before its folder is touched."""
    check_trackers(spec.trackers)
    spec, preset_note = with_embedded_preset(spec)
    method_cls, dataset_spec = METHODS.get(spec.method), DATASETS.get(spec.dataset)
    hparams, dataset_options = split_options(spec)
    spec = dataclasses.replace(spec, backbone=spec.backbone or method_cls.default_backbone or DEFAULT_BACKBONE)
    ranks, device = join(pick_device(spec.device))  # a data-parallel run's rank (torchrun), else one process
    out_root = run_dir.parents[1] if run_dir is not None else results_root(spec.out)
    check_writable(out_root)
    spec = dataclasses.replace(spec, checkpoint=_checkpoint_path(spec, method_cls))
    dataset = load_dataset(dataset_spec.name, spec.data_root, dataset_options)
    run_id = ranks.broadcast(run_dir.name if run_dir else new_run_id(method_cls.name, dataset_spec.name))
    folder, primary_run_dir = _rank_folder(ranks, run_dir or out_root / "runs" / run_id)
    folder.check_resumable_by(ranks.size)
    console = (console or Console()) if ranks.is_main else Console(quiet=True)
    log = _logger(run_id, console)
    notes = [*dataset.notes, *([preset_note] if preset_note else [])]
    if preset_note:
        log.info(preset_note)
    say = functools.partial(warn, console, log, notes)
    options = CommonOptions.of(hparams)
    seed_everything(spec.seed)
    request = BackboneRequest(spec.backbone, spec.weights or spec.checkpoint, spec.allow_download,
                              spec.allow_random_init, method_cls.checkpoint_prefixes if spec.checkpoint else ())
    backbone = open_backbone(request, options.image_size, device, say, log.info)
    return RunContext(spec=spec, method_cls=method_cls, dataset_name=dataset_spec.name, dataset=dataset,
                      hparams=hparams, dataset_options=dataset_options, options=options, backbone_request=request,
                      backbone=backbone, device=device, amp_dtype=amp_dtype(options.amp, device, say), world=ranks,
                      run_dir=folder.path, cache_dir=folder.out_root / "cache", console=console, log=log,
                      notes=notes, primary_run_dir=primary_run_dir, method_preprocessing=method_cls.preprocessing)


def with_embedded_preset(spec: RunSpec) -> tuple[RunSpec, str | None]:
    """On the embedded default (its dataset, no --backbone): the method's micro tower (pretrained weights
    shipped with the package, or random init for towers that have none), and the embedded preset (the common
    one and the method's own) for every declared key not given; and a line saying so. Elsewhere the spec as
    it is."""
    if not is_embedded(spec.dataset, spec.backbone):
        return spec, None
    method_cls = METHODS.get(spec.method)
    declared = declared_options(spec.method, spec.dataset)
    preset = {key: value for key, value in {**EMBEDDED_PRESET, **method_cls.embedded_preset}.items()
              if key in declared and key not in spec.overrides}
    backbone = parse_backbone(method_cls.embedded_backbone)
    towers = [backbone, *(parse_backbone(value) for key, value in preset.items() if key.endswith("backbone"))]
    random_init = [tower.name for tower in towers if not tower.shipped]  # micro towers with no weights to ship
    weights = "pretrained weights shipped with lt-bench" if backbone.shipped else "random init"
    note = (f"embedded default: {backbone.name} ({weights}) on {EMBEDDED_DATASET}"
            + (f"; random init: {', '.join(random_init)}" if random_init else "") + ", preset "
            + " ".join(f"{key}={value}" for key, value in preset.items()))
    return dataclasses.replace(spec, backbone=backbone.name, overrides={**preset, **spec.overrides},
                               allow_random_init=spec.allow_random_init or bool(random_init)), note


def split_options(spec: RunSpec) -> tuple[dict, dict]:
    """The run's --set values resolved against their declarations: the hyperparameters (common and method
    options) and the dataset options."""
    dataset_spec = DATASETS.get(spec.dataset)
    values = resolve(declared_options(spec.method, spec.dataset), spec.overrides)
    dataset_options = {k: values[k] for k in dataset_spec.options}
    hparams = {k: v for k, v in values.items() if k not in dataset_spec.options}
    return hparams, dataset_options


def _rank_folder(ranks: World, primary: Path) -> tuple[RunFolder, Path]:
    """This rank's run folder, and rank 0's (`primary`): a data-parallel run's other ranks keep their own scratch
    folder (log, best epoch's weights, caches) inside rank 0's."""
    if ranks.is_main:
        return RunFolder(primary), primary
    rank_root = primary / "ranks" / str(ranks.rank)
    check_writable(rank_root)
    return RunFolder(rank_root / "runs" / primary.name), primary


def check_writable(root: Path) -> None:
    """Refuse a results root that cannot be written before anything is loaded or written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe.", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as error:
        raise BenchError(f"cannot write to the results root {root}: {error.strerror or error}; pass --out DIR "
                         f"(a writable folder) or set {RESULTS_ENV}") from None


def _checkpoint_path(spec: RunSpec, method_cls) -> str | None:
    if not spec.checkpoint:
        return None
    if not hasattr(method_cls, "import_checkpoint"):
        raise UsageError(f"method {method_cls.name} cannot import checkpoints; `bench eval` supports: "
                         + ", ".join(n for n, cls in METHODS.items() if hasattr(cls, "import_checkpoint")))
    path = Path(spec.checkpoint).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    return str(path)


def _logger(run_id: str, console: Console) -> logging.Logger:
    log = logging.getLogger(f"bench.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        log.addHandler(RichHandler(console=console, show_path=False, show_level=False, markup=False))
    return log
