"""Rules for indexing: ``x[...]`` on tensors and on tuples of outputs, and tensor attributes."""

from __future__ import annotations

from typing import Any

import torch

from modeconn.symmetry.arguments import ArgumentsNotUnderstood
from modeconn.symmetry.context import RuleContext, flat_values
from modeconn.symmetry.rules.common import axis_index
from modeconn.symmetry.spaces import Layout, TensorLayout

__all__ = ["getitem", "gather", "index_tensor", "narrow", "tensor_attribute"]


def getitem(ctx: RuleContext) -> Any:
    """``x[i]`` on a tuple/list picks an element; on a tensor, basic slicing keeps sub-layouts
    (and heads their units, unless the slice cuts them), an integer index fixes its axis (it
    picks one unit), one integer index tensor is a lookup (:func:`gather`), and other advanced
    indexing is unsupported."""
    raw = ctx.args["index"]
    try:
        a = ctx.folded("input")  # heads are collapsed below, if the index cuts them
    except ArgumentsNotUnderstood:
        a = ctx.ann(ctx.args["input"])
    if not isinstance(a, TensorLayout):
        return _index_structure(ctx, a, raw)
    raw_items = raw if isinstance(raw, tuple) else (raw,)
    # a tensor's recorded value is its torch.Size (a tuple): look at the raw nodes, not the values
    tensors = [k for k, r in enumerate(raw_items) if isinstance(ctx.ann(r), TensorLayout)]
    if tensors:
        return _index_with_tensors(ctx, a, raw_items, tensors)
    idx = tuple(ctx.value(r) for r in raw_items)
    if any(isinstance(i, (list, type, bool)) for i in idx):
        return ctx.unsupported("advanced (list or boolean) indexing")
    if sum(1 for i in idx if i is not None and i is not Ellipsis) > a.ndim:
        return ctx.unsupported("more indices than axes")
    items = _index_items(idx, a.ndim)
    fold = a.fold
    if fold is not None and _cuts_heads(a, items):
        a, fold = ctx.collapse(a), None
    layouts: list = []
    new_axis: dict[int, int] = {}
    for i, k in items:
        if i is None:
            layouts.append(None)
        elif isinstance(i, int):
            ctx.fix(a[k], "indexing picks a single unit")
        elif isinstance(i, slice):
            new_axis[k] = len(layouts)
            layouts.append(_sliced(ctx, a[k], a.shape[k], i))
        else:
            return ctx.unsupported(f"indexing with {type(i).__name__}")
    fold = fold.shifted(new_axis.__getitem__) if fold is not None else None
    return ctx.out(layouts, uniform=a.uniform, fold=fold)


def _index_structure(ctx: RuleContext, a: Any, raw: Any) -> Any:
    """``x[i]`` on what is not a tensor: an element of a tuple, list or dict."""
    index = ctx.value(raw)
    if isinstance(a, (list, tuple)) and isinstance(index, (int, slice)):
        return a[index]
    if isinstance(a, dict) and index in a:
        return a[index]
    if any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
        return ctx.unsupported("indexing a structure discovery does not know")
    return None


def _index_with_tensors(ctx: RuleContext, a: TensorLayout, raw_items: tuple, tensors: list[int]) -> Any:
    """Advanced indexing with the index tensors at positions ``tensors`` of ``raw_items``: one
    among full slices (and an ``Ellipsis``) is a lookup (:func:`gather`), others unsupported."""
    values = [None if k in tensors else ctx.value(r) for k, r in enumerate(raw_items)]
    rest_full = (k in tensors or v in (slice(None), Ellipsis) for k, v in enumerate(values))
    if len(tensors) != 1 or not all(rest_full):
        return ctx.unsupported("advanced (tensor) indexing other than one integer index tensor")
    (k,) = tensors
    if Ellipsis in values[:k]:  # it stands for the axes no other item names
        k += a.ndim - sum(v is not Ellipsis for v in values) - 1
    return gather(ctx, ctx.collapse(a), k, raw_items[tensors[0]])


def _index_items(idx: tuple, ndim: int) -> list[tuple[Any, int | None]]:
    """Each item of a basic index, an ``Ellipsis`` spelled out as full slices and trailing axes
    added, with the input axis it reads (``None`` for an inserted axis)."""
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    items: list[tuple[Any, int | None]] = []
    axis = 0
    for i in idx:
        if i is Ellipsis:
            fill = range(axis, axis + ndim - n_real)
            items += [(slice(None), k) for k in fill]
            axis += len(fill)
        elif i is None:
            items.append((None, None))
        else:
            items.append((i, axis))
            axis += 1
    return items + [(slice(None), k) for k in range(axis, ndim)]


def _cuts_heads(a: TensorLayout, items: list[tuple[Any, int | None]]) -> bool:
    """Whether an index cuts the axes of ``a``'s heads or of their units (heads keep their
    units only if it does not)."""
    whole = {k for i, k in items if isinstance(i, slice) and i.indices(a.shape[k]) == (0, a.shape[k], 1)}
    return not {a.fold.heads, a.fold.dims, a.fold.outer} - {None} <= whole


def _sliced(ctx: RuleContext, layout: Layout | None, size: int, i: slice) -> Layout | None:
    """The layout of an axis of ``size`` units sliced by ``i``: a strided slice fixes it."""
    start, stop, step = i.indices(size)
    if step != 1:
        ctx.fix(layout, "strided slicing")
        return None
    if (start, stop) == (0, size):
        return layout
    return ctx.sub_layout(layout, start, max(start, stop))


def gather(ctx: RuleContext, x: TensorLayout, axis: int, index: Any) -> TensorLayout:
    """``x[..., index, ...]`` with one integer index tensor at ``axis``: entries looked up by
    position along ``axis`` (a table of relative position biases), which is fixed, as are the
    index's own axes, which take its place; the other axes pass through."""
    if ctx.dtype(index) is None or ctx.dtype(index).is_floating_point or ctx.dtype(index) == torch.bool:
        return ctx.unsupported("indexing with a tensor that is not of integers (a boolean mask)")
    ctx.fix(x[axis], "entries looked up by an index tensor")
    idx = ctx.ann(index)
    for lay in idx.layouts:
        ctx.fix(lay, "positions of an index tensor")
    return ctx.out([*x.layouts[:axis], *(None,) * idx.ndim, *x.layouts[axis + 1 :]])


def index_tensor(ctx: RuleContext) -> TensorLayout:
    """aten.index(input, indices): advanced indexing as torch.export records it; one integer
    index tensor (the other entries ``None``) is a lookup along its axis (:func:`gather`)."""
    indices = list(ctx.args["indices"])
    used = [k for k, r in enumerate(indices) if r is not None]
    if len(used) != 1:
        return ctx.unsupported("advanced indexing with several index tensors")
    return gather(ctx, ctx.tensor("input"), used[0], indices[used[0]])


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
    """``x.shape`` and friends are metadata; ``x.T`` (and ``x.H``) reverses the axes, ``x.mT``
    (and ``x.mH``) swaps the last two (a conjugate changes values, not their order)."""
    attr = ctx.args["name"]
    if attr in _METADATA and not any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
        return None  # read without collapsing heads: metadata couples nothing
    x = ctx.ann(ctx.args["input"])
    fields = getattr(ctx.value(ctx.args["input"]), "_fields", None)
    if fields and attr in fields and isinstance(x, (tuple, list)):  # torch.return_types: max(...).values
        return x[fields.index(attr)]
    if attr in _METADATA or not isinstance(x, TensorLayout):
        if any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
            return ctx.unsupported(f"attribute {attr!r}")
        return None
    if attr in ("T", "H") and (attr == "T" or x.ndim <= 2):
        return ctx.out(x.layouts[::-1])
    if attr in ("mT", "mH") and x.ndim >= 2:
        return ctx.out(x.layouts[:-2] + (x[-1], x[-2]))
    return ctx.unsupported(f"tensor attribute {attr}")
