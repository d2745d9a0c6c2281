"""The training engine: runs a method's phases epoch by epoch, checkpoints after every epoch, resumes."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.atomic_io import atomic_torch_save
from bench.callbacks import Callback
from bench.context import RunContext
from bench.distributed import world
from bench.errors import BenchError, first_line
from bench.metrics import evaluate_logits, none_if_nan
from bench.progress_bars import Bars, RunClock, clock_text, progress_bars
from bench.run_folder import resume_command
from bench.seeding import seed_everything
from bench.selection import TIE_BREAK, selection_key

if TYPE_CHECKING:
    from bench.methods.base import Method, Phase

SYNC_EVERY = 25  # steps between host syncs (loss shown, finiteness checked); also at every epoch's end
EXPLOSION_FACTOR = 10.0  # an epoch whose mean loss exceeds this multiple of its phase's first epoch's is flagged


class TrainingDiverged(Exception):
    """The loss became non-finite: training stops, and the run is evaluated with its last finished epoch."""


SCHEDULES = ("cosine", "linear")


def epoch_lr(base_lr: float, epoch: float, epochs: int, warmup_epochs: int, warmup_start: float = 1e-6,
             schedule: str = "cosine") -> float:
    """Per-epoch learning rate. `cosine` is LPT's official schedule (timm CosineLRScheduler, t_initial = epochs,
    warmup_t = warmup_epochs, no warm-up prefix): linear from `warmup_start` during warm-up, then
    0.5 · base · (1 + cos(π · epoch / epochs)). `linear` is Hugging Face's get_linear_schedule_with_warmup at
    each epoch's start after the same warm-up: base · (epochs − epoch) / (epochs − warmup_epochs)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: one of {', '.join(SCHEDULES)}")
    if epoch < warmup_epochs:
        return warmup_start + (base_lr - warmup_start) * epoch / warmup_epochs
    if schedule == "linear":
        return base_lr * (epochs - epoch) / max(1, epochs - warmup_epochs)
    return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def phase_lr(phase: Phase, base_lr: float, epoch: int, history: Sequence[dict], metric: str | None) -> float:
    """The learning rate of `phase`'s epoch `epoch`: `epoch_lr`'s schedule (the phase's cosine or linear), or its Plateau
    replayed over the val `metric` of its epochs before this one in `history` (the run's checkpointed history,
    so a resumed run gets the same rates)."""
    if phase.plateau is None:
        return epoch_lr(base_lr, epoch, phase.epochs, phase.warmup_epochs, schedule=phase.schedule)
    seen = [entry["val"][metric] for entry in history if entry["phase"] == phase.name and entry["epoch"] < epoch
            and (entry.get("val") or {}).get(metric) is not None]
    return phase.plateau.lr(base_lr, seen)


def trainable_state(model: torch.nn.Module, phases: list[Phase]) -> dict[str, torch.Tensor]:
    """What the checkpoints hold: the phases' parameters and the buffers they list as `state`."""
    kept = {id(t) for phase in phases for t in (*phase.parameters, *phase.state)}
    named = (*model.named_parameters(), *model.named_buffers())
    return {name: t.detach().clone() for name, t in named if id(t) in kept}


def count_parameters(phases: list[Phase]) -> int:
    seen: dict[int, int] = {}
    for phase in phases:
        for p in phase.parameters:
            seen[id(p)] = p.numel()
    return sum(seen.values())


@dataclass
class TrainingState:
    phase: int = 0
    next_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    best: dict | None = None  # {"phase", "epoch", "val"} of the best validated epoch of the current phase
    selected: list[dict] = field(default_factory=list)  # per finished phase: the epoch whose weights were kept
    data_wait_s: float = 0.0  # of train_time_s, the time spent waiting for training batches
    resumed: bool = False  # read from a checkpoint
    health: list[str] = field(default_factory=list)  # what made the run untrustworthy (empty: healthy)


@dataclass(frozen=True)
class EpochRun:
    """What one epoch of training works with: the phases, which phase and epoch, its optimizer (None: the phase
    fits whole epochs itself), the gradient scaler and the phase's loss module."""

    phases: list[Phase]
    index: int
    epoch: int
    optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module | None


def load_checkpoint(path: Path, device: torch.device, run_dir: Path):
    """torch.load of a checkpoint the engine wrote; an unreadable one is one line saying how to restart."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001  (truncated, garbage, not a checkpoint: torch raises many kinds)
        raise unreadable_checkpoint(path, run_dir, error) from None


def unreadable_checkpoint(path: Path, run_dir: Path, error: BaseException) -> BenchError:
    return BenchError(f"checkpoint {path} is unreadable ({first_line(error)}); delete it and run "
                      f"`{resume_command(run_dir)}` to train this run again from its first epoch")


class _PhaseLoss(torch.nn.Module):
    """A phase's loss as a module over the method's model, so DistributedDataParallel sees the forward pass of
    the parameters it synchronises (the trainable ones: frozen parameters are not wrapped)."""

    def __init__(self, model: torch.nn.Module, loss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch) -> torch.Tensor:
        return self.loss(batch)


def phase_loss(phase: Phase, model: torch.nn.Module, device: torch.device):
    """The phase's loss function: itself in one process; in several, through DDP (gradients averaged over the
    ranks' shares of each global batch)."""
    if not world().distributed:
        return phase.loss
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: prompt pools and experts leave some trainable parameters out of a given step
    return DistributedDataParallel(_PhaseLoss(model, phase.loss), find_unused_parameters=True,
                                   device_ids=[device.index] if device.type == "cuda" else None)


class Engine:
    def __init__(self, method: Method, ctx: RunContext, callbacks: Sequence[Callback] = ()):
        self.method = method
        self.ctx = ctx
        self.callbacks = tuple(callbacks)
        self.checkpoint_path = ctx.run_dir / "checkpoints" / "last.pt"
        self.best_path = ctx.run_dir / "checkpoints" / "best.pt"
        # every rank resumes from rank 0's checkpoint: one source, so no rank can be an epoch ahead of another
        self.resume_path = (ctx.primary_run_dir or ctx.run_dir) / "checkpoints" / "last.pt"

    def evaluate(self, split: str):
        return self.evaluate_with_logits(split)[0]

    def evaluate_with_logits(self, split: str):
        """(metrics, logits [N, C], labels [N]) of the current model on `split` (all-undefined metrics for an
        empty split: a dataset run without a val split)."""
        if len(getattr(self.ctx.dataset, split)) == 0:
            logits, labels = np.zeros((0, self.ctx.dataset.num_classes), np.float32), np.zeros(0, np.int64)
        else:
            logits, labels = self.method.predict(split)
            logits, labels = logits.float().numpy(), labels.numpy()
        metrics = evaluate_logits(labels, logits, self.ctx.dataset.train_counts, self.ctx.hparams["shot_convention"])
        return metrics, logits, labels

    def _save(self, state: TrainingState, optimizer: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler,
              phases: list[Phase]) -> None:
        """The checkpoint after an epoch (rank 0's only: the ranks' states are equal). At a phase boundary
        (next_epoch 0) it holds no optimizer state: the optimizer belongs to the phase just finished, and the
        next phase starts with a fresh one."""
        if not world().is_main:
            return
        atomic_torch_save(self.checkpoint_path, {
            "phase": state.phase, "next_epoch": state.next_epoch, "history": state.history,
            "train_time_s": state.train_time_s, "best": state.best, "selected": state.selected,
            "health": state.health, "data_wait_s": state.data_wait_s, "scaler": scaler.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None and state.next_epoch > 0 else None,
            "model": trainable_state(self.method.model(), phases),
        })

    def _load(self, phases: list[Phase]) -> tuple[TrainingState, dict | None, dict | None]:
        """The training, optimizer and gradient-scaler states of the last checkpoint (fresh ones when there is
        none)."""
        if not self.resume_path.exists():
            return TrainingState(), None, None
        blob = load_checkpoint(self.resume_path, self.ctx.device, self.ctx.run_dir)
        try:
            model = self.method.model()
            missing = set(blob["model"]) - {n for n, _ in (*model.named_parameters(), *model.named_buffers())}
            if missing:
                raise RuntimeError(f"it has tensors this model lacks: {sorted(missing)[:3]}")
            self.method.model().load_state_dict(blob["model"], strict=False)
            state = TrainingState(blob["phase"], blob["next_epoch"], blob["history"], blob["train_time_s"],
                                  blob["best"], blob["selected"], blob.get("data_wait_s", 0.0), resumed=True,
                                  health=blob.get("health", []))
        except (KeyError, TypeError, RuntimeError) as error:
            raise unreadable_checkpoint(self.resume_path, self.ctx.run_dir, error) from None
        return state, blob["optimizer"], blob.get("scaler")

    def train(self) -> TrainingState:
        ctx = self.ctx
        phases = self.method.phases()
        state, optimizer_state, scaler_state = self._load(phases)
        if ctx.hparams["compile"]:
            ctx.compile_backbone()
        if state.resumed:
            ctx.log.info(f"resuming at phase {state.phase} ({phases[min(state.phase, len(phases) - 1)].name}), "
                         f"epoch {state.next_epoch}")
        scaler = torch.amp.GradScaler(enabled=ctx.amp_dtype == torch.float16)
        if scaler_state:
            scaler.load_state_dict(scaler_state)
        clock = RunClock([phase.epochs for phase in phases])
        with progress_bars(ctx.console) as progress:
            self._reenter_after_training(phases, state)
            for index in range(state.phase, len(phases)):
                phase = phases[index]
                if phase.epochs == 0:  # switched off (e.g. LPT's phase2_epochs=0): never entered, so the model
                    continue  # predicts as the last phase that trained left it, not with a phase's untrained parts
                optimizer = self._enter(phase, optimizer_state)
                optimizer_state = None
                loss_fn = phase_loss(phase, self.method.model(), ctx.device) if optimizer is not None else None
                for epoch in range(state.next_epoch, phase.epochs):
                    self._run_epoch(EpochRun(phases, index, epoch, optimizer, scaler, loss_fn), state, progress,
                                    clock)
                state.phase, state.next_epoch = index + 1, 0
        return state

    def _enter(self, phase: Phase, optimizer_state: dict | None) -> torch.optim.Optimizer | None:
        """Enter `phase`, fresh or resumed: only its parameters learn, its start hook ran, and its optimizer (None
        for a phase that fits whole epochs itself) is made, with the checkpoint's state when resuming."""
        if 0 < phase.epochs <= phase.warmup_epochs:
            raise BenchError(f"{phase.name}: warmup_epochs={phase.warmup_epochs} covers all of its "
                             f"{phase.epochs} epoch(s), so it would train only at warm-up learning rates "
                             "(the first from 1e-6); lower warmup_epochs below the epochs")
        self._freeze_all_but(phase)
        if phase.on_start:
            phase.on_start()
        optimizer = phase.make_optimizer(phase.parameters) if phase.fit_epoch is None else None
        for group in optimizer.param_groups if optimizer else ():
            group.setdefault("base_lr", group["lr"])
        if optimizer is not None and optimizer_state is not None:
            try:
                optimizer.load_state_dict(optimizer_state)
            except (ValueError, KeyError) as error:
                raise BenchError(f"{self.resume_path}: its optimizer state does not fit {phase.name}'s "
                                 f"optimizer ({first_line(error)}); the run cannot resume from it: delete "
                                 f"it and run `{resume_command(self.ctx.run_dir)}` to train it again") from None
        return optimizer

    def _run_epoch(self, run: EpochRun, state: TrainingState, progress, clock: RunClock) -> None:
        """One epoch of a phase: train, validate when due, record it in the history, select the best epoch at the
        phase's end, checkpoint, report, and tell the callbacks a phase ended."""
        phase, index, epoch, optimizer = run.phases[run.index], run.index, run.epoch, run.optimizer
        started = time.perf_counter()
        loss, waited = self._train_epoch(phase, index, epoch, optimizer, run.scaler, progress, run.loss_fn,
                                         clock.remaining(index, epoch), state.history)
        seconds = time.perf_counter() - started
        state.train_time_s += seconds
        state.data_wait_s += waited
        self._check_explosion(state, phase, epoch, loss)
        entry = {"phase": phase.name, "epoch": epoch, "step": len(state.history) + 1, "loss": loss,
                 "lr": optimizer.param_groups[0]["lr"] if optimizer else None,
                 "seconds": seconds, "data_wait_share": waited / seconds if seconds > 0 else 0.0}
        val = None
        if self._should_validate(epoch, phase):
            val = phase.validate() if phase.validate else self.evaluate("val")
        if val is not None:
            entry["val"] = val.summary()
            entry["val_se"] = none_if_nan(val.standard_error(self.ctx.hparams["selection_metric"]))
            self._track_best(state, index, epoch, entry["val"], run.phases)
        state.history.append(entry)
        state.next_epoch = epoch + 1
        phase_done = state.next_epoch == phase.epochs
        if phase_done:
            self._select(state, index, phase, run.phases)
            state.phase, state.next_epoch = index + 1, 0
        self._save(state, optimizer, run.scaler, run.phases)
        clock.finished_epoch(index, time.perf_counter() - started)
        self._report(entry, clock.remaining(index, epoch + 1))
        if phase_done:
            selected = {**state.selected[-1], "epoch": state.selected[-1]["epoch"] + 1}
            for callback in self.callbacks:
                callback.on_phase_end(phase.name, selected, self.ctx.run_dir)

    @staticmethod
    def _reenter_after_training(phases: list[Phase], state: TrainingState) -> None:
        """Resumed after the last phase that has epochs: its state (e.g. LPT's stage) is needed to predict."""
        last = max((i for i, phase in enumerate(phases) if phase.epochs > 0), default=None)
        if last is not None and state.phase > last and phases[last].on_start:
            phases[last].on_start()

    def _check_explosion(self, state: TrainingState, phase: Phase, epoch: int, loss: float) -> None:
        first = next((entry["loss"] for entry in state.history if entry["phase"] == phase.name), None)
        if first is None or not first > 0 or loss <= EXPLOSION_FACTOR * first:
            return
        if any(flag.startswith(f"loss exploded in {phase.name}") for flag in state.health):
            return
        flag = (f"loss exploded in {phase.name}: epoch {epoch + 1} loss {loss:.4g} is {loss / first:.0f}× the "
                f"phase's first epoch ({first:.4g})")
        state.health.append(flag)
        self.ctx.warn(f"training health: {flag}")

    def recover(self, diverged: TrainingDiverged) -> TrainingState:
        """After a non-finite loss: the weights of the last finished epoch (the phase's best on val so far), or,
        when no epoch finished, the model as it stands; flagged either way."""
        state = self.stop_early() if self.resume_path.exists() else TrainingState()
        state.health.append(f"diverged: {diverged}")
        when = "evaluated with the weights of its last finished epoch" if state.history else "in its first epoch"
        self.ctx.warn(f"training health: diverged ({diverged}); {when}")
        return state

    def stop_early(self) -> TrainingState:
        """End training where the checkpoint left it (a trial a scheduler stopped): the phase in progress keeps
        its best epoch on val so far (model_selection=best_val) or its latest one."""
        phases = self.method.phases()
        state, _, _ = self._load(phases)
        if not state.history:
            raise RuntimeError(f"{self.ctx.run_dir.name}: no finished epoch to stop at")
        index = state.phase if state.next_epoch > 0 else state.phase - 1
        phase = phases[index]
        self._freeze_all_but(phase)
        if phase.on_start:
            phase.on_start()
        last_epoch = state.history[-1]["epoch"]
        if state.next_epoch > 0:  # stopped inside the phase: it has no selection yet
            self._select(state, index, phase, phases, last_epoch)
        return state

    def _track_best(self, state: TrainingState, index: int, epoch: int, val: dict, phases: list[Phase]) -> None:
        """Keep the weights of the phase's best epoch on val by the selection rule (`bench.selection`: the
        selection metric, then the lower class-balanced NLL, then the earlier epoch)."""
        metric = self.ctx.hparams["selection_metric"]
        if self.ctx.hparams["model_selection"] != "best_val" or val.get(metric) is None:
            return
        best = state.best if state.best and state.best["phase"] == index else None
        key = selection_key(val, metric)
        if best is None or key > selection_key({metric: best["val"], TIE_BREAK: best.get(TIE_BREAK)}, metric):
            atomic_torch_save(self.best_path, trainable_state(self.method.model(), phases))
            state.best = {"phase": index, "epoch": epoch, "val": val[metric], TIE_BREAK: val.get(TIE_BREAK)}

    def _select(self, state: TrainingState, index: int, phase: Phase, phases: list[Phase],
                last_epoch: int | None = None) -> None:
        """At a phase's end, restore its best-on-val epoch (model_selection=best_val) or keep the last one, and
        keep the phase's result as checkpoints/phase-<name>.pt."""
        best = state.best if state.best and state.best["phase"] == index else None
        epoch = phase.epochs - 1 if last_epoch is None else last_epoch
        if best is not None and best["epoch"] != epoch:
            weights = load_checkpoint(self.best_path, self.ctx.device, self.ctx.run_dir)
            self.method.model().load_state_dict(weights, strict=False)
            epoch = best["epoch"]
            self.ctx.log.info(f"{phase.name}: kept epoch {epoch + 1} (best val "
                              f"{self.ctx.hparams['selection_metric']} {best['val']:.2f}) instead of the last")
        state.selected.append({"phase": phase.name, "epoch": epoch, "val": best["val"] if best else None})
        atomic_torch_save(self.checkpoint_path.parent / f"phase-{phase.name}.pt",
                        trainable_state(self.method.model(), phases))

    def _should_validate(self, epoch: int, phase: Phase) -> bool:
        if len(self.ctx.dataset.val) == 0:  # no val split (val_split=none): each phase keeps its last epoch
            return False
        every = self.ctx.hparams["val_every"]
        return epoch + 1 == phase.epochs or phase.plateau is not None or (every > 0 and (epoch + 1) % every == 0)

    def _freeze_all_but(self, phase: Phase) -> None:
        model = self.method.model()
        wanted = {id(p) for p in phase.parameters}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)

    def _train_epoch(self, phase: Phase, index: int, epoch: int, optimizer, scaler, progress: Bars, loss_fn,
                     run_left: float | None, history: Sequence[dict] = ()) -> tuple[float, float]:
        """(mean loss, seconds spent waiting for batches) of one epoch; its bar shows the whole run's time left
        (`run_left`, this epoch included) as estimated when it started; `history` (the epochs so far) sets a
        Plateau phase's rate."""
        ctx = self.ctx
        seed_everything(world().noise_seed(ctx.seed, index, epoch))
        if phase.fit_epoch is not None:
            self.method.model().train()
            return phase.fit_epoch(epoch), 0.0
        for group in optimizer.param_groups:
            group["lr"] = phase_lr(phase, group["base_lr"], epoch, history,
                                   ctx.hparams["selection_metric"] if phase.plateau else None)
        self.method.model().train()
        total = phase.steps_per_epoch() if phase.steps_per_epoch else None
        run_eta = f" (run: {clock_text(run_left)} left)" if run_left is not None else ""
        bar = progress.bar(f"{phase.name} {epoch + 1}/{phase.epochs}{run_eta}", total)
        loss_sum, steps, shown = torch.zeros((), device=ctx.device), 0, ""
        batches, waited = iter(phase.batches(epoch)), 0.0
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - started
            if batch is None:
                break
            self._warmup_step(phase, optimizer, epoch, steps, total)
            with self.ctx.autocast():
                loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if phase.after_step is not None:
                phase.after_step()
            loss_sum += loss.detach().float()
            steps += 1
            if steps % SYNC_EVERY == 0:  # the only host syncs: every SYNC_EVERY steps and at the epoch's end
                shown = f"loss {self._finite_mean(loss_sum, steps, phase, epoch):.3f}"
            bar.advance(shown)
        bar.close()
        return (self._finite_mean(loss_sum, steps, phase, epoch) if steps else float("nan")), waited

    @staticmethod
    def _warmup_step(phase: Phase, optimizer, epoch: int, step: int, total: int | None) -> None:
        """Per-iteration warm-up (`phase.warmup_per == "iteration"`): inside a warm-up epoch the rate rises at
        every step along the same line from 1e-6, instead of holding the epoch's start value for the whole epoch."""
        if phase.warmup_per != "iteration" or epoch >= phase.warmup_epochs or not total:
            return
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(group["base_lr"], epoch + min(step, total) / total, phase.epochs,
                                   phase.warmup_epochs, schedule=phase.schedule)

    @staticmethod
    def _finite_mean(loss_sum: torch.Tensor, steps: int, phase: Phase, epoch: int) -> float:
        """The mean loss so far (over all ranks' shares); a non-finite one ends training (the weights since the
        last checkpoint are dropped: recovery reloads it)."""
        mean = world().mean(loss_sum).item() / steps
        if not math.isfinite(mean):
            raise TrainingDiverged(f"loss became {mean} in {phase.name} epoch {epoch + 1}")
        return mean

    def _report(self, entry: dict, run_left: float | None) -> None:
        val = entry.get("val")
        metric = self.ctx.hparams["selection_metric"]
        shown = f" val {metric} {val[metric]:.2f}" if val and val.get(metric) is not None else ""
        lr = f" lr {entry['lr']:.3g}" if entry["lr"] is not None else ""
        self.ctx.log.info(f"{entry['phase']} epoch {entry['epoch'] + 1}: loss {entry['loss']:.4f}{lr}{shown} "
                          f"({entry['seconds']:.1f} s, {entry['data_wait_share']:.0%} waiting for data"
                          + (f"; run: {clock_text(run_left)} left)" if run_left else ")"))
        numbered = {**entry, "epoch": entry["epoch"] + 1}  # hooks number epochs from 1, as the log line above
        for callback in self.callbacks:
            callback.on_epoch_end(numbered, self.ctx.run_dir)
