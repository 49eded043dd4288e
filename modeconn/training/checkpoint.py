"""Checkpoints of models and curves: written atomically, loaded safely, checked on load.

``.safetensors`` files hold the state dict alone (safetensors' format, no code execution on
load); other suffixes hold the state dict plus training state (optimizer, scheduler, epoch,
random number generators) through ``torch.save``, and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import CheckpointError
from modeconn.evaluation import architecture_difference

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write"]

FORMAT = "modeconn-checkpoint/1"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it
    onto ``path``: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(".safetensors")


def save_checkpoint(module: nn.Module, path: str | os.PathLike, **training_state: Any) -> Path:
    """Write ``module``'s state dict (a model or a :class:`~modeconn.Curve`) to ``path``, atomically.

    ``training_state`` (optimizer and scheduler state dicts, epoch, ...) is stored beside it;
    it must be made of tensors, numbers, strings, lists and dicts, and it needs a ``.pt`` file
    (a ``.safetensors`` file holds tensors only). Returns the path.
    """
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if _is_safetensors(path):
        if training_state:
            raise CheckpointError(
                f"{os.fspath(path)!r}: training state needs a .pt checkpoint, not .safetensors"
            )
        from safetensors.torch import save_file

        # safetensors refuses tensors that share memory; copies are cheap next to a training epoch
        tensors = {k: v.contiguous().clone() for k, v in state.items()}
        meta = {"format": FORMAT, "class": type(module).__qualname__}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    payload = {"format": FORMAT, "class": type(module).__qualname__, "state": state, **training_state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _read(path: Path) -> dict[str, Any]:
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                return {**meta, "state": {k: f.get_tensor(k) for k in f.keys()}}
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {os.fspath(path)!r}: the file is truncated, damaged or not a checkpoint "
            f"({type(e).__name__}: {e}). Delete it to start over, or pass another file."
        ) from e
    if not isinstance(payload, dict) or "state" not in payload:
        raise CheckpointError(f"{os.fspath(path)!r} is not a modeconn checkpoint (no state dict in it)")
    return payload


def load_checkpoint(module: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``module``, in place.

    Raises :class:`~modeconn.CheckpointError` naming the first differing entry when the file
    was written for another architecture, and when it is truncated or damaged. Returns the
    training state stored with it (empty for ``.safetensors``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {os.fspath(path)!r}")
    payload = _read(path)
    saved = payload.pop("state")
    expected = module.state_dict()
    # safetensors sorts its keys: compare in the module's order, unexpected entries last
    state = {k: saved[k] for k in expected if k in saved} | {
        k: v for k, v in saved.items() if k not in expected
    }
    if (where := architecture_difference(state, expected)) is not None:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} was written for another architecture (a {payload.get('class', '?')}); "
            f"first difference, checkpoint vs this {type(module).__name__}: {where}"
        )
    module.load_state_dict(state)
    payload.pop("format", None)
    payload.pop("class", None)
    return payload
