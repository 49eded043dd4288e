"""The settings of a fit — optimizer, learning-rate schedule, batch size — as one object that
``train_model``, ``fit_curve`` and every optimizer plugin receive.

A schedule is a callable ``schedule(epoch, epochs) -> factor``: the learning rate of epoch
``epoch`` (0-based) of ``epochs`` is ``lr × factor``. Built in: :class:`Step` (the paper's end
points), :class:`Cosine`, :class:`Garipov` (Garipov et al.'s curves, used by the paper's robust
curves) and :class:`Constant`; any function of that signature works too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modeconn.errors import InvalidArgumentError

__all__ = [
    "Settings",
    "SETTING_NAMES",
    "END_POINTS",
    "CURVES",
    "Schedule",
    "Step",
    "Cosine",
    "HoldThenLinear",
    "Constant",
    "SCHEDULES",
]

Schedule = Callable[[int, int], float]


@dataclass(frozen=True)
class Step:
    """``gamma`` to the power of the number of whole ``every``-epoch periods done (PyTorch's
    StepLR; the paper halves the rate every 20 epochs)."""

    every: int = 20
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.every < 1 or self.gamma <= 0:
            raise InvalidArgumentError(f"Step needs every >= 1 and gamma > 0, got {self}")

    def __call__(self, epoch: int, epochs: int) -> float:
        return self.gamma ** (epoch // self.every)


@dataclass(frozen=True)
class Cosine:
    """Half a cosine from 1 down to ``final`` over the run (Loshchilov & Hutter 2017, no restarts)."""

    final: float = 0.0

    def __call__(self, epoch: int, epochs: int) -> float:
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))


@dataclass(frozen=True)
class HoldThenLinear:
    """1 for the first half of the run, then linear down to ``final`` at 90%, then ``final``:
    the schedule of Garipov et al. (2018), which the paper's curves are trained with."""

    final: float = 0.01

    def __call__(self, epoch: int, epochs: int) -> float:
        progress = epoch / max(epochs, 1)
        if progress <= 0.5:
            return 1.0
        if progress <= 0.9:
            return 1.0 - (progress - 0.5) / 0.4 * (1.0 - self.final)
        return self.final


@dataclass(frozen=True)
class Constant:
    """The same rate for every epoch."""

    def __call__(self, epoch: int, epochs: int) -> float:
        return 1.0


SCHEDULES: dict[str, type] = {
    "step": Step,
    "cosine": Cosine,
    "hold_then_linear": HoldThenLinear,
    "garipov": HoldThenLinear,  # the paper's name for it
    "constant": Constant,
}


def __getattr__(name: str) -> type:
    if name == "Garipov":
        import warnings

        warnings.warn(
            "the schedule Garipov is now HoldThenLinear (the old name goes in the next minor version)",
            DeprecationWarning,
            stacklevel=2,
        )
        return HoldThenLinear
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


"""The built-in schedules by the names :class:`Settings` accepts."""

SETTING_NAMES = (
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "batch_size",
    "lr_step",
    "lr_gamma",
    "sync_bn",
)


@dataclass(frozen=True)
class Settings:
    """How to fit: SGD at ``lr`` with ``momentum`` (``nesterov``) and ``weight_decay``, the rate
    scaled each epoch by ``schedule``, batches of ``batch_size`` (the global batch: under
    torchrun each of N ranks takes ``batch_size / N``). ``sync_bn``: under torchrun, BatchNorm
    layers normalize with the statistics of the global batch (PyTorch's ``SyncBatchNorm``, which
    needs CUDA or XPU devices), as one process would; without it each rank uses its own shard's.

    ``schedule`` is a schedule object, a callable ``(epoch, epochs) -> factor``, or a name in
    :data:`SCHEDULES`; ``"step"`` (the default) reads ``lr_step`` and ``lr_gamma``. The defaults
    are the paper's recipe for end points; ``fit_curve`` defaults to ``lr=0.01``.
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str | Schedule = "step"
    batch_size: int = 128
    lr_step: int = 20
    lr_gamma: float = 0.5
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise InvalidArgumentError(f"lr must be positive, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise InvalidArgumentError("momentum and weight_decay must be >= 0")
        if not isinstance(self.sync_bn, bool):
            raise InvalidArgumentError(f"sync_bn must be true or false, got {self.sync_bn!r}")
        if self.nesterov and self.momentum == 0:
            raise InvalidArgumentError("nesterov needs momentum > 0")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {self.batch_size}")
        if isinstance(self.schedule, str) and self.schedule not in SCHEDULES:
            raise InvalidArgumentError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)} or pass a "
                "callable (epoch, epochs) -> factor"
            )
        if not isinstance(self.schedule, str) and not callable(self.schedule):
            raise InvalidArgumentError(f"schedule must be a name or a callable, got {self.schedule!r}")
        self.lr_schedule  # noqa: B018  (validates Step's arguments now, not at the first epoch)

    @property
    def lr_schedule(self) -> Schedule:
        """The schedule as a callable ``(epoch, epochs) -> factor``."""
        if self.schedule == "step":
            return Step(self.lr_step, self.lr_gamma)
        if isinstance(self.schedule, str):
            return SCHEDULES[self.schedule]()
        return self.schedule

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; an unknown name is an error that lists the known ones."""
        unknown = sorted(set(changes) - set(SETTING_NAMES))
        if unknown:
            raise InvalidArgumentError(
                f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(SETTING_NAMES)}"
            )
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (a custom schedule by its repr), for checkpoints and configs."""
        out = dataclasses.asdict(self)
        if not isinstance(self.schedule, str):
            out["schedule"] = repr(self.schedule)
        return out

    @classmethod
    def of(cls, settings: Settings | Mapping[str, Any] | None, default: Settings, **flat: Any) -> Settings:
        """``settings`` (or ``default``), with the flat keyword arguments given (not ``None``) on top."""
        base = default if settings is None else settings
        if isinstance(base, Mapping):
            base = default.replace(**base)
        if not isinstance(base, Settings):
            raise InvalidArgumentError(
                f"settings must be a modeconn.Settings or a dict, got {type(base).__name__}"
            )
        given = {k: v for k, v in flat.items() if v is not None}
        return base.replace(**given) if given else base


END_POINTS = Settings()
"""The paper's recipe for end points (``train_model``'s default): lr 0.1, momentum 0.9, weight
decay 5e-4, halved every 20 epochs, batches of 128."""

CURVES = Settings(lr=1e-2)
"""``fit_curve``'s default: :data:`END_POINTS` at lr 0.01."""
