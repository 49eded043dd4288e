"""Rules for indexing: ``x[...]`` on tensors and on tuples of outputs, and tensor attributes."""

from __future__ import annotations

from typing import Any

import torch

from modeconn.symmetry.context import RuleContext, flat_values
from modeconn.symmetry.rules.common import axis_index
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["getitem", "narrow", "tensor_attribute"]


def getitem(ctx: RuleContext) -> Any:
    """``x[i]`` on a tuple/list picks an element; on a tensor, basic slicing keeps sub-layouts,
    an integer index fixes its axis (it picks one unit), and advanced indexing is unsupported."""
    raw = ctx.args["index"]
    a = ctx.ann(ctx.args["input"])
    if not isinstance(a, TensorLayout):
        index = ctx.value(raw)
        if isinstance(a, (list, tuple)) and isinstance(index, (int, slice)):
            return a[index]
        if isinstance(a, dict) and index in a:
            return a[index]
        if any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
            return ctx.unsupported("indexing a structure discovery does not know")
        return None
    raw_items = raw if isinstance(raw, tuple) else (raw,)
    # a tensor's recorded value is its torch.Size (a tuple): look at the raw nodes, not the values
    if any(isinstance(ctx.ann(r), TensorLayout) for r in raw_items):
        return ctx.unsupported("advanced (tensor) indexing")
    idx = tuple(ctx.value(r) for r in raw_items)
    if any(isinstance(i, (list, type, bool)) for i in idx):
        return ctx.unsupported("advanced (list or boolean) indexing")
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    layouts: list = []
    axis = 0
    for i in idx:
        if i is Ellipsis:
            for _ in range(a.ndim - n_real):
                layouts.append(a[axis])
                axis += 1
        elif i is None:
            layouts.append(None)
        elif isinstance(i, int):
            ctx.fix(a[axis], "indexing picks a single unit")
            axis += 1
        elif isinstance(i, slice):
            start, stop, step = i.indices(a.shape[axis])
            if step != 1:
                ctx.fix(a[axis], "strided slicing")
                layouts.append(None)
            elif (start, stop) == (0, a.shape[axis]):
                layouts.append(a[axis])
            else:
                layouts.append(ctx.sub_layout(a[axis], start, max(start, stop)))
            axis += 1
        else:
            return ctx.unsupported(f"indexing with {type(i).__name__}")
    layouts.extend(a[k] for k in range(axis, a.ndim))
    return ctx.out(layouts, uniform=a.uniform)


def narrow(ctx: RuleContext) -> TensorLayout:
    """narrow(dim, start, length): a slice of one axis."""
    x = ctx.tensor("input")
    d = axis_index(int(ctx.const("dim")), x.ndim)
    start, length = int(ctx.const("start")), int(ctx.const("length"))
    start = start + x.shape[d] if start < 0 else start
    layout = x[d] if (start, length) == (0, x.shape[d]) else ctx.sub_layout(x[d], start, start + length)
    return ctx.out([layout if a == d else x[a] for a in range(x.ndim)], uniform=x.uniform)


_METADATA = ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout", "is_sparse")


def tensor_attribute(ctx: RuleContext) -> Any:
    """``x.shape`` and friends are metadata; ``x.T`` reverses the axes, ``x.mT`` swaps the last two."""
    attr = ctx.args["name"]
    x = ctx.ann(ctx.args["input"])
    fields = getattr(ctx.value(ctx.args["input"]), "_fields", None)
    if fields and attr in fields and isinstance(x, (tuple, list)):  # torch.return_types: max(...).values
        return x[fields.index(attr)]
    if attr in _METADATA or not isinstance(x, TensorLayout):
        if any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
            return ctx.unsupported(f"attribute {attr!r}")
        return None
    if attr == "T" and x.ndim <= 2:
        return ctx.out(x.layouts[::-1])
    if attr == "mT" and x.ndim >= 2:
        return ctx.out(x.layouts[:-2] + (x[-1], x[-2]))
    return ctx.unsupported(f"tensor attribute {attr}")
