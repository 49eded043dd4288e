"""The random generators of a step: it seeds its own fork of torch's global generators, and the
caller's are given back as they were when it ends."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Mapping
from typing import Any

_RNG_SCOPE: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "modeconn_workflow_rng_scope", default=None
)


def _keeps_caller_rng(step: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``step`` with a scope that :func:`_fork_rng` forks torch's global generators into, given
    back as they were when the step ends (however it ends): a step seeds them from its ``seed``
    (same seed, same results) without reseeding the caller's."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with contextlib.ExitStack() as scope:
            token = _RNG_SCOPE.set(scope)
            try:
                return step(*args, **kwargs)
            finally:
                _RNG_SCOPE.reset(token)

    return run


def _fork_rng() -> None:
    """From here to the end of the step, torch's global generators (the CPU's and every CUDA
    device's) are a fork of the caller's. Called once the step's checks pass, not before: a
    mistake is reported before torch is imported."""
    import torch

    scope = _RNG_SCOPE.get()
    if scope is None:
        raise RuntimeError("_fork_rng() outside a step decorated with _keeps_caller_rng")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    scope.enter_context(torch.random.fork_rng(devices=devices))


def _seed(cfg: Mapping[str, Any]) -> None:
    """Seed the step's fork of torch's global generators (see :func:`_fork_rng`)."""
    import torch

    torch.manual_seed(int(cfg["seed"]))
