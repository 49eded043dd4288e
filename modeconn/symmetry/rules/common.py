"""Building blocks for rules, public for rule authors: broadcasting, elementwise ops,
pass-through ops, and the channel axis of convolution-like layers.

A rule receives a :class:`~modeconn.symmetry.RuleContext` for one graph node and returns the
:class:`~modeconn.symmetry.TensorLayout` of the node's output (a tuple of them for several
outputs). A rule must be *sound*: whatever it lets be permuted must leave the model's function
unchanged. When in doubt, a rule fixes — and a rule that raises, or reads an argument the
call does not have, makes the node unsupported, which fixes everything it touches.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from modeconn.symmetry.context import RuleContext, flat_values, relayout
from modeconn.symmetry.spaces import Fold, Layout, TensorLayout

__all__ = [
    "axis_index",
    "broadcast",
    "elementwise",
    "activation",
    "passthrough",
    "metadata",
    "channel_axis",
    "fix_axes",
]


def axis_index(axis: int, ndim: int) -> int:
    """A possibly negative axis as an index in ``range(ndim)``; out of range raises."""
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < ndim:
        raise IndexError(f"axis {axis} out of range for {ndim} dimensions")
    return a


def broadcast(
    ctx: RuleContext, inputs: Sequence[TensorLayout], out_shape: Sequence[int], why: str = "elementwise op"
) -> list[Layout | None]:
    """The output layouts of an op that broadcasts ``inputs`` against each other (numpy rules:
    axes line up from the right). Axes that meet at the output's size are coupled; axes of size
    1 are broadcast and couple nothing; uniform tensors (all elements equal) couple nothing."""
    out_shape = tuple(out_shape)
    layouts: list[Layout | None] = []
    for i, n in enumerate(out_shape):
        cands = []
        for t in inputs:
            j = t.ndim - len(out_shape) + i
            if j >= 0 and not t.uniform and t.shape[j] == n and n != 1:
                cands.append(t[j])
        layouts.append(ctx.merge_all(cands, why) if cands else None)
    return layouts


_SUMS = (operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__", "__iadd__")
_SUMS += (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)  # torch.export's


def elementwise(ctx: RuleContext) -> TensorLayout | None:
    """Any elementwise op of tensors and numbers (``add``, ``mul``, ``where``, ``clamp`` with
    tensor bounds): the operands' axes are coupled where they broadcast."""
    if not isinstance(ctx.out_value, torch.Size):
        if any(isinstance(ctx.value(a), torch.Size) for a in (*ctx.node.args, *ctx.node.kwargs.values())):
            return ctx.unsupported("an elementwise op with several outputs")
        return None  # arithmetic on Python numbers (shapes)
    tensors = ctx.inputs(folded=True)
    fold = _common_fold(tensors, tuple(ctx.out_value))
    if fold is None:
        tensors = [ctx.collapse(t) for t in tensors]
    else:
        flat = ctx.merge_all([t.fold.flat for t in tensors if t.fold is not None], "heads' units")
        fold = Fold(fold.heads, fold.dims, flat, fold.outer, fold.repeat) if flat is not None else None
    out = ctx.out(
        broadcast(ctx, tensors, ctx.out_value),
        uniform=bool(tensors) and all(t.uniform for t in tensors),
        fold=fold,
    )
    if ctx.node.target in _SUMS:
        ctx.site("pre", out)  # a residual sum: observable before the block's nonlinearity
    return out


def _common_fold(tensors: Sequence[TensorLayout], out_shape: tuple) -> Fold | None:
    """The fold an elementwise result keeps: every operand with per-head units has the output's
    shape and the same heads and units axes, and no other operand varies along the units axis."""
    folds = {t.fold for t in tensors if t.fold is not None and not t.uniform}
    folded = [t for t in tensors if t.fold is not None and not t.uniform]
    if not folded or any(t.shape != out_shape for t in folded):
        return None
    if len({(f.heads, f.dims, f.outer, f.repeat) for f in folds}) != 1:
        return None
    fold = folded[0].fold
    for t in tensors:
        if t.fold is None and not t.uniform:
            j = t.ndim - len(out_shape) + fold.dims
            if j >= 0 and t.shape[j] != 1:
                return None
    return fold


def activation(ctx: RuleContext) -> TensorLayout:
    """A pointwise nonlinearity: elementwise, and its output is a post-activation site."""
    out = elementwise(ctx)
    ctx.site("post", out)
    return out


@relayout
def passthrough(ctx: RuleContext) -> TensorLayout:
    """The output is the input, perhaps converted (identity, dropout, ``contiguous``, ``to``)."""
    x = ctx.folded("input")
    if tuple(ctx.out_value) != x.shape:
        return ctx.unsupported("a pass-through op changed the shape")
    return ctx.out(x.layouts, uniform=x.uniform, fold=x.fold)


def metadata(ctx: RuleContext) -> None:
    """Ops that read only metadata (``size``, ``dim``, ``numel``): no constraint."""
    if any(isinstance(v, torch.Size) for v in flat_values(ctx.out_value)):
        return ctx.unsupported("a metadata op returned a tensor")
    return None


def fix_axes(ctx: RuleContext, t: TensorLayout, axes: Sequence[int], why: str) -> None:
    """Fix the layouts of ``t`` along ``axes``."""
    for a in axes:
        ctx.fix(t[a], why)


def channel_axis(ctx: RuleContext, x: TensorLayout, spatial: int, why: str = "spatial axis") -> int:
    """The channel axis of the input of a layer over ``spatial`` trailing axes (a convolution,
    a pool): 1 when batched, 0 when not. The spatial axes are fixed: the layer mixes positions."""
    if x.ndim not in (spatial + 1, spatial + 2):
        raise ValueError(f"expected {spatial + 1} or {spatial + 2} dimensions, got {x.ndim}")
    cax = x.ndim - spatial - 1
    fix_axes(ctx, x, range(cax + 1, x.ndim), f"{why}, whose positions the layer mixes")
    return cax
