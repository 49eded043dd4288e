"""Checkpoints of models and curves: written atomically, loaded safely, checked on load.

``.safetensors`` files hold the state dict alone (safetensors' format, no code execution on
load); other suffixes hold the state dict plus training state (optimizer, scheduler, epoch,
random number generators) through ``torch.save``, and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import ArchitectureMismatchError, CheckpointError
from modeconn.modules import unwrap
from modeconn.state import architecture_difference

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write"]

FORMAT = "modeconn-checkpoint/1"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it
    onto ``path``: a crash leaves either the old file or the new one, never half of one. The
    file gets the permissions any new file of the user gets (``mkstemp`` alone would make it
    private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(".safetensors")


def save_checkpoint(module: nn.Module, path: str | os.PathLike, **training_state: Any) -> Path:
    """Write ``module``'s state dict (a model or a :class:`~modeconn.Curve`) to ``path``, atomically.

    ``training_state`` (optimizer and scheduler state dicts, epoch, ...) is stored beside it;
    it must be made of tensors, numbers, strings, lists and dicts, and it needs a ``.pt`` file
    (a ``.safetensors`` file holds tensors only). Returns the path.
    """
    state = {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}
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


def _damaged(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {os.fspath(path)!r}: it is truncated or damaged, or not a checkpoint "
        f"({type(e).__name__}: {str(e).splitlines()[0][:160]}). Pass another file, or delete it to start over."
    )


def _read(path: Path) -> dict[str, Any]:
    """The file as ``{"state": state dict, ...training state}``, whatever wrote it."""
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                return {**meta, "state": {k: f.get_tensor(k) for k in f.keys()}}
        except SafetensorError as e:
            raise _damaged(path, e) from e
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (an object of type {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} holds pickled Python objects{what}, which modeconn does not load: "
            f"files are read with weights_only=True. Save the state dict instead: "
            f"torch.save(model.state_dict(), path), or a .safetensors file."
        ) from e
    except (PermissionError, IsADirectoryError, FileNotFoundError):
        raise  # the file system's answer, as it is: not a damaged checkpoint
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:  # not a zip or pickle torch reads
        raise _damaged(path, e) from e
    if isinstance(payload, dict) and "state" in payload and isinstance(payload["state"], dict):
        return payload
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"state": payload}  # a plain torch.save(model.state_dict())
    raise CheckpointError(
        f"{os.fspath(path)!r} is not a checkpoint: it holds a {type(payload).__name__}, not a state dict "
        f"(a dict of tensors) or a modeconn checkpoint"
    )


def _strip_wrapper_prefix(
    saved: dict[str, torch.Tensor], expected: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Keys saved from a DataParallel/DistributedDataParallel (``module.``) or ``torch.compile``
    (``_orig_mod.``) wrapper, for a module that is not wrapped."""
    for prefix in ("module.", "_orig_mod."):
        if (
            saved
            and all(k.startswith(prefix) for k in saved)
            and not any(k.startswith(prefix) for k in expected)
        ):
            return {k[len(prefix) :]: v for k, v in saved.items()}
    return saved


def load_checkpoint(module: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint into ``module``, in place: one written by :func:`save_checkpoint`, a
    plain ``torch.save(model.state_dict())``, or a ``.safetensors`` file from any tool; keys with
    a DataParallel/DDP ``module.`` prefix are matched too. Pickled objects are refused (files
    are read with ``weights_only=True``).

    Raises :class:`~modeconn.ArchitectureMismatchError` naming the first differing entry when
    the file was written for another architecture, and :class:`~modeconn.CheckpointError` when
    it is truncated, damaged or of another kind. Returns the training state stored with it
    (empty for weights alone).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {os.fspath(path)!r}")
    module = unwrap(module)
    payload = _read(path)
    expected = module.state_dict()
    saved = _strip_wrapper_prefix(payload.pop("state"), expected)
    # safetensors sorts its keys: compare in the module's order, unexpected entries last
    state = {k: saved[k] for k in expected if k in saved} | {
        k: v for k, v in saved.items() if k not in expected
    }
    if (where := architecture_difference(state, expected)) is not None:
        raise ArchitectureMismatchError(
            f"checkpoint {os.fspath(path)!r} was written for another architecture (a {payload.get('class', '?')}); "
            f"first difference, checkpoint vs this {type(module).__name__}: {where}"
        )
    module.load_state_dict(state)
    payload.pop("format", None)
    payload.pop("class", None)
    return payload
