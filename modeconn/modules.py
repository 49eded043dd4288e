"""Generic helpers for ``nn.Module`` objects that every part of modeconn uses: unwrapping
(DataParallel, DistributedDataParallel, ``torch.compile``), train/eval modes, devices, dtypes
and tied tensors."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

__all__ = [
    "unwrap",
    "unknown_hooks",
    "modes_restored",
    "device_of",
    "float_dtype_of",
    "tensor_aliases",
    "Normalize",
    "normalized",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``nn.DataParallel``, ``DistributedDataParallel`` and
    ``torch.compile`` wrappers (nested ones too); other modules are returned as they are."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def modes_restored(*models: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag afterwards (mixed modes included)."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a module with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def float_dtype_of(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (or buffer), if any."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def tensor_aliases(model: nn.Module) -> dict[str, str]:
    """For every state-dict entry, the name of the first entry holding the same tensor (itself
    unless the tensor is tied: ``proj.weight = emb.weight``)."""
    first: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        out[name] = first.setdefault(id(t), name)
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (axis 1): normalization inside a model, so that it takes
    inputs in [0, 1] and an attack's ε is in pixel units (RobustBench's convention)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def normalized(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """``model`` with :class:`Normalize` in front (submodules ``normalize`` and ``model``)."""
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), model=model))


def _known_hook_types() -> tuple[type, ...]:
    from torch.nn.utils.spectral_norm import SpectralNorm, SpectralNormLoadStateDictPreHook
    from torch.nn.utils.weight_norm import WeightNorm

    return (WeightNorm, SpectralNorm, SpectralNormLoadStateDictPreHook)


def unknown_hooks(module: nn.Module) -> list[str]:
    """The forward (pre-)hooks of ``module`` whose effect discovery cannot follow."""
    known = _known_hook_types()
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return [getattr(h, "__qualname__", type(h).__name__) for h in hooks if not isinstance(h, known)]
