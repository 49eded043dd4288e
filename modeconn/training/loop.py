"""The epoch loop behind ``train_model`` and ``fit_curve``: data, device, progress bars,
callbacks, checkpoints after every epoch, and resuming from them."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from modeconn import distributed
from modeconn.data.batches import Batches, batches
from modeconn.errors import DataError, InvalidArgumentError, ResumeWarning, TrainingError
from modeconn.modules import float_dtype_of
from modeconn.predictions import predictions
from modeconn.training.checkpoint import load_checkpoint, save_checkpoint
from modeconn.training.trainer import Trainer

__all__ = ["EpochRecord", "History", "TrainState", "Callback", "run_epochs", "as_loader"]


@dataclass
class EpochRecord:
    """One finished epoch: mean training loss and accuracy (%) over its batches, the learning
    rate it ran at, and its wall time."""

    epoch: int
    loss: float
    accuracy: float
    lr: float
    seconds: float

    def __str__(self) -> str:
        return f"epoch {self.epoch}: loss {self.loss:.4f}, accuracy {self.accuracy:.2f}%, lr {self.lr:g}, {self.seconds:.1f}s"


class History(list):
    """The :class:`EpochRecord` of every epoch (a list), and ``summary``: what the trainer
    reported besides the weights (:meth:`~modeconn.training.trainer.Trainer.summary`; PAM's
    permutation and log)."""

    def __init__(self, records: Iterable[EpochRecord] = (), summary: dict[str, Any] | None = None):
        super().__init__(records)
        self.summary: dict[str, Any] = summary or {}


@dataclass
class TrainState:
    """What callbacks see. Set ``stop = True`` to end training after the current epoch."""

    module: nn.Module
    trainer: Trainer
    epoch: int
    epochs: int
    batch: int = 0
    loss: float = float("nan")
    history: list[EpochRecord] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Hooks into the training loop; override what you need. A plain function passed as a
    callback is called as ``on_epoch_end(state)``."""

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_batch_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[TrainState], Any]):
        self.on_epoch_end = fn  # type: ignore[method-assign]


def as_loader(data: Any, batch_size: int = 128) -> Batches:
    """A re-iterable source of labelled batches (see :mod:`modeconn.data.batches`): a DataLoader
    or iterable as given, a Dataset or an ``(x, y)`` pair of tensors shuffled in batches of
    ``batch_size`` (split between the ranks under torchrun)."""
    loader = batches(data, batch_size=batch_size, shuffle=True, reiterable=True, shard=True)
    strategy = distributed.current()
    if (
        strategy.world_size > 1
        and loader.sampler is None
        and not hasattr(getattr(data, "sampler", None), "set_epoch")
    ):
        warnings.warn(
            f"under torchrun, every one of the {strategy.world_size} ranks trains on all of this "
            f"{type(data).__name__}; pass a Dataset (split here) or a DataLoader with a DistributedSampler",
            stacklevel=3,
        )
    return loader


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def _set_rng_state(saved: dict[str, Any], strategy: distributed.Strategy) -> None:
    """This rank's generators as saved. Each rank keeps its own; on another number of ranks
    every rank restarts from rank 0's, offset by its rank (dropout masks and attack starts then
    differ from the interrupted run's; the model, optimizer, schedule, t and data order do not)."""
    ranks = saved.get("ranks", [saved])  # checkpoints before 0.3 hold one process's state
    if len(ranks) == strategy.world_size:
        state = ranks[strategy.rank]
        torch.set_rng_state(state["torch"])
    else:
        state = ranks[0]
        torch.set_rng_state(state["torch"])
        if strategy.rank:
            torch.manual_seed(int(torch.randint(0, 2**62, ())) + strategy.rank)
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # one state per visible GPU (before 0.3)
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def _batch_correct(scored: torch.Tensor, target: torch.Tensor, n: int) -> float:
    """The batch's correct predictions, counted for its ``n`` samples: the fraction of its
    scored predictions that are right (one per sample, or one per token), times ``n``. Computed
    from the integer count, so that one prediction per sample gives the count exactly (the
    fraction times ``n`` is not always: 1/49 * 49 is 0.9999999999999999)."""
    hits = scored.argmax(1) == target
    return int(hits.sum()) * n / hits.numel() if hits.numel() else float("nan")


def _epoch_totals(
    strategy: distributed.Strategy, loss_sum: float, correct: float, seen: int
) -> tuple[float, float, int]:
    """The epoch's loss sum, correct count and sample count over all ranks (this process's own
    on one). All-reduced in float64, which adds integer counts exactly; nothing is truncated
    (``int`` of a sum that lands a hair under a whole number would drop a sample)."""
    if strategy.world_size <= 1:
        return loss_sum, correct, seen
    totals = strategy.all_reduce(torch.tensor([loss_sum, correct, seen], dtype=torch.float64))
    return float(totals[0]), float(totals[1]), round(float(totals[2]))


def _settings_changed(saved: dict[str, Any] | None, given: dict[str, Any]) -> list[str]:
    if not saved:
        return []
    return [f"{k} {saved[k]!r} -> {given[k]!r}" for k in given if k in saved and saved[k] != given[k]]


def _resume(
    trainer: Trainer,
    checkpoint: str | os.PathLike,
    state: TrainState,
    sampler: Any,
    *,
    progress: bool,
    desc: str,
) -> int:
    """Continue from ``checkpoint``: the module, the trainer, the random generators, the data
    order and ``state.history`` as saved, and settings changed since applied (with a warning).
    The first epoch left to run."""
    strategy = trainer.strategy
    saved = load_checkpoint(trainer.module, checkpoint)
    trainer.call_hook("load_state_dict", saved["trainer"])
    _set_rng_state(saved["rng"], strategy)
    if sampler is not None and "data_seed" in saved:
        sampler.seed = int(saved["data_seed"])
    state.history = [EpochRecord(**r) for r in saved["history"]]
    start = int(saved["epoch"]) + 1
    changed = _settings_changed(saved.get("settings"), trainer.settings.describe())
    if changed:
        trainer.apply_settings()
        if strategy.is_main:
            warnings.warn(
                f"resuming from {os.fspath(checkpoint)} with changed settings, applied from epoch "
                f"{start}: " + "; ".join(changed),
                ResumeWarning,
                stacklevel=4,
            )
    if progress:
        tqdm.write(f"{desc}: resuming from {os.fspath(checkpoint)} after epoch {start - 1}")
    return start


def _diverged(
    desc: str, epoch: int, batch: int, loss: float, lr: float, checkpoint: str | os.PathLike | None
) -> TrainingError:
    """The error for a non-finite loss in ``batch`` of ``epoch``."""
    return TrainingError(
        f"{desc} diverged in epoch {epoch}, batch {batch}: the loss is {loss}. "
        f"Lower the learning rate (now {lr:g})"
        + (
            f"; the last finished epoch is saved in {os.fspath(checkpoint)}"
            if checkpoint is not None and os.path.exists(checkpoint)
            else ""
        )
    )


def _train_epoch(
    trainer: Trainer,
    data: Iterable,
    state: TrainState,
    callbacks: Sequence[Callback],
    *,
    epoch: int,
    epochs: int,
    device: torch.device,
    dtype: torch.dtype | None,
    desc: str,
    progress: bool,
    checkpoint: str | os.PathLike | None,
) -> EpochRecord:
    """Train ``trainer.module`` for one epoch over ``data``, keeping ``state`` current and
    calling the trainer's hooks and the callbacks' ``on_epoch_start`` and ``on_batch_end``;
    the epoch's record, over all ranks."""
    state.epoch, state.batch = epoch, 0
    trainer.module.train()
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    trainer.call_hook("on_epoch_start", epoch)
    for cb in callbacks:
        cb.on_epoch_start(state)
    lr = trainer.optimizer.param_groups[0]["lr"]
    began, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
    bar = tqdm(data, desc=f"{desc} {epoch}/{epochs}", disable=not progress, leave=False, unit="batch")
    for batch in bar:
        if batch.target is None:
            raise DataError(
                "training needs labelled batches: (inputs..., labels) tuples or dicts with 'labels'"
            )
        batch = batch.to(device, dtype)
        x, y = batch.x, batch.target
        loss, logits = trainer.call_hook("training_step", x, y)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise _diverged(desc, epoch, state.batch + 1, loss_value, lr, checkpoint)
        n = len(batch)
        loss_sum += loss_value * n
        scored, target = predictions(logits, y, next_token=trainer.next_token)
        correct += _batch_correct(scored, target, n)
        seen += n
        state.batch, state.loss = state.batch + 1, loss_value
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}%", refresh=False)
        for cb in callbacks:
            cb.on_batch_end(state)
    loss_sum, correct, seen = _epoch_totals(trainer.strategy, loss_sum, correct, seen)
    if seen == 0:
        raise DataError("train_data produced no batches")
    trainer.scheduler.step()
    trainer.call_hook("on_epoch_end", epoch)
    return EpochRecord(epoch, loss_sum / seen, 100.0 * correct / seen, lr, time.perf_counter() - began)


def _save_epoch(
    trainer: Trainer,
    checkpoint: str | os.PathLike,
    epoch: int,
    history: list[EpochRecord],
    sampler: Any,
) -> None:
    """Save the run as of the end of ``epoch`` to ``checkpoint``, all that :func:`_resume`
    reads: the module, the trainer, every rank's random generators, the history, the
    settings and the data order."""
    strategy = trainer.strategy
    rng = {"ranks": strategy.gather(_rng_state())}
    if strategy.is_main:
        save_checkpoint(
            trainer.module,
            checkpoint,
            trainer=trainer.call_hook("state_dict"),
            epoch=epoch,
            history=[asdict(r) for r in history],
            rng=rng,
            settings=trainer.settings.describe(),
            **({"data_seed": sampler.seed} if sampler is not None else {}),
        )
    strategy.barrier()  # no rank runs ahead of the file it would resume from


def run_epochs(
    trainer: Trainer,
    data: Iterable,
    *,
    epochs: int,
    device: torch.device,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback | Callable] = (),
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train ``trainer.module`` for ``epochs`` epochs over ``data``; with ``checkpoint``, save
    after every epoch and, when the file exists and ``resume`` is true, continue from it."""
    if epochs < 0:
        raise InvalidArgumentError(f"epochs must be >= 0, got {epochs}")
    module = trainer.module
    strategy = trainer.strategy
    progress = progress and strategy.is_main
    dtype = float_dtype_of(module)
    cbs = [c if isinstance(c, Callback) else _FunctionCallback(c) for c in callbacks]
    state = TrainState(module=module, trainer=trainer, epoch=0, epochs=epochs)
    sampler = getattr(data, "sampler", None)
    start = 1
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        start = _resume(trainer, checkpoint, state, sampler, progress=progress, desc=desc)
    synced = contextlib.ExitStack()
    if strategy.world_size > 1:
        if trainer.settings.sync_bn:
            synced.enter_context(strategy.synced_batchnorm(module))
        trainer.wrapped = strategy.wrap(module, broadcast_buffers=trainer.broadcast_buffers)

    with synced, torch.enable_grad():
        if start <= epochs:
            trainer.call_hook("on_fit_start", data, epochs)
        for epoch in range(start, epochs + 1):
            record = _train_epoch(
                trainer,
                data,
                state,
                cbs,
                epoch=epoch,
                epochs=epochs,
                device=device,
                dtype=dtype,
                desc=desc,
                progress=progress,
                checkpoint=checkpoint,
            )
            state.history.append(record)
            if checkpoint is not None:
                _save_epoch(trainer, checkpoint, epoch, state.history, sampler)
            if progress:
                tqdm.write(f"{desc} {record} (of {epochs})")
            for cb in cbs:
                cb.on_epoch_end(state)
            if state.stop:
                break
    trainer.wrapped = module
    module.eval()
    return History(state.history, trainer.call_hook("summary"))
