"""Where a module's tensors really live: parametrizations and module hooks.

A rule binds the axes of the tensors a layer uses (``conv.weight``). With
``torch.nn.utils.parametrizations.weight_norm`` / ``spectral_norm`` (or the older hook-based
``torch.nn.utils.weight_norm`` / ``spectral_norm``) that tensor is computed from others that
the state dict holds; permuting it means permuting them:

* weight norm along ``dim``: ``w = g · v / ‖v‖`` with the norm over every axis but ``dim``.
  Axis ``k`` of ``w`` follows axis ``k`` of ``v``, and of ``g`` when ``k == dim`` (``g`` has
  size 1 elsewhere): permuting any other axis of ``v`` leaves each norm unchanged.
* spectral norm along ``dim``: ``w = w₀ / σ`` with ``σ = uᵀ W v``, ``W`` being ``w₀`` with axis
  ``dim`` first and the others flattened. Axis ``dim`` follows ``u``; another axis follows
  ``v`` in the flattened order (``inner`` = the sizes after it, repeated for those before).

Any other parametrization, and any forward hook other than these two, is unknown: what it
computes cannot be followed, so the layer it touches is fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn
from torch.nn.utils import parametrize

from modeconn.symmetry.spaces import Layout

__all__ = ["Derived", "derived_tensors"]


@dataclass(frozen=True)
class Derived:
    """A tensor a module computes from state-dict entries: ``follow(axis, layout)`` gives the
    ``(entry, axis, layout)`` bindings that permuting ``axis`` of it by ``layout`` implies, or
    ``None`` when it cannot be followed (``why`` says why)."""

    name: str
    follow: Callable[[int, Layout | None], list[tuple[str, int, Layout | None]] | None]
    why: str


def _weight_norm(g: str, v: str, dim: int | None, ndim: int) -> Callable:
    # dim None or -1: one norm over the whole tensor and a scalar g, which nothing permutes
    dim = None if dim is None or dim == -1 else dim % ndim

    def follow(axis: int, layout: Layout | None):
        return [(v, axis, layout), (g, axis, layout)] if axis == dim else [(v, axis, layout)]

    return follow


def _spectral_norm(orig: str, u: str, v: str, dim: int, shape: tuple[int, ...]) -> Callable:
    dim = dim % len(shape)
    others = [a for a in range(len(shape)) if a != dim]

    def follow(axis: int, layout: Layout | None):
        if axis == dim:
            return [(orig, axis, layout), (u, 0, layout)]
        k = others.index(axis)
        inner = math.prod(shape[a] for a in others[k + 1 :])
        outer = math.prod(shape[a] for a in others[:k])
        flat = None if layout is None else tuple((s, i * inner) for s, i in layout) * outer
        return [(orig, axis, layout), (v, 0, flat)]

    return follow


def derived_tensors(model: nn.Module, state_names: set[str]) -> dict[str, Derived]:
    """Every tensor name a rule may bind that the state dict does not hold, with how to follow it."""
    out: dict[str, Derived] = {}
    from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for prefix, m in model.named_modules():
        p = f"{prefix}." if prefix else ""
        if parametrize.is_parametrized(m):
            for tensor, plist in m.parametrizations.items():
                name, base = f"{p}{tensor}", f"{p}parametrizations.{tensor}"
                kinds = [type(x) for x in plist]
                shape = tuple(getattr(m, tensor).shape)
                if kinds == [_WeightNorm]:
                    follow = _weight_norm(f"{base}.original0", f"{base}.original1", plist[0].dim, len(shape))
                    out[name] = Derived(name, follow, "weight norm")
                elif kinds == [_SpectralNorm]:
                    sn = plist[0]
                    follow = _spectral_norm(f"{base}.original", f"{base}.0._u", f"{base}.0._v", sn.dim, shape)
                    out[name] = Derived(name, follow, "spectral norm")
                else:
                    why = f"computed by the parametrization {' -> '.join(k.__name__ for k in kinds)}"
                    out[name] = Derived(name, lambda axis, layout: None, why)
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                name = f"{p}{hook.name}"
                ndim = getattr(m, f"{hook.name}_v").ndim
                follow = _weight_norm(f"{name}_g", f"{name}_v", hook.dim, ndim)
                out[name] = Derived(name, follow, "weight norm (hook)")
            elif isinstance(hook, SpectralNorm):
                name = f"{p}{hook.name}"
                shape = tuple(getattr(m, f"{hook.name}_orig").shape)
                follow = _spectral_norm(f"{name}_orig", f"{name}_u", f"{name}_v", hook.dim, shape)
                out[name] = Derived(name, follow, "spectral norm (hook)")
    return {k: v for k, v in out.items() if k not in state_names}
