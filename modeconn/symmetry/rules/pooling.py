"""Rules for ops over spatial axes: pooling, resampling and padding. The channel (and batch)
axes pass through; the spatial axes, whose positions the op mixes, are fixed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.rules.common import channel_axis, fix_axes
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["pool", "resample", "pad", "pad_module"]


def _spatial(ctx: RuleContext, spatial: int):
    x = ctx.tensor("input")
    cax = channel_axis(ctx, x, spatial, "pooled or resampled axis")
    out_val = ctx.out_value
    shapes = (out_val,) if isinstance(out_val, torch.Size) else tuple(out_val)
    outs = tuple(TensorLayout(s, [x[a] if a <= cax else None for a in range(len(s))]) for s in shapes)
    # return_indices: the indices of a max pool are spatial positions, per channel like the values
    return outs[0] if isinstance(out_val, torch.Size) else outs


def pool(spatial: int) -> Callable[[RuleContext], TensorLayout]:
    """The rule of a pool over ``spatial`` trailing axes (max, average, adaptive, LP)."""

    def rule(ctx: RuleContext):
        return _spatial(ctx, spatial)

    rule.__name__ = rule.__qualname__ = f"pool{spatial}d"
    rule.__doc__ = f"A pool over the {spatial} trailing axes: channels pass through."
    return rule


def resample(ctx: RuleContext):
    """F.interpolate / nn.Upsample: every axis after (batch, channel) is resampled."""
    return _spatial(ctx, ctx.tensor("input").ndim - 2)


def _padded(ctx: RuleContext, x: TensorLayout, widths) -> TensorLayout:
    if len(widths) % 2 or len(widths) // 2 > x.ndim:
        raise ValueError(f"padding {widths} for {x.ndim} dimensions")
    padded = [x.ndim - 1 - k for k in range(len(widths) // 2) if widths[2 * k] or widths[2 * k + 1]]
    fix_axes(ctx, x, padded, "padded axis")
    return ctx.out([None if a in padded else x[a] for a in range(x.ndim)])


def pad(ctx: RuleContext) -> TensorLayout:
    """F.pad(input, pad, mode, value): the padded (trailing) axes are fixed."""
    return _padded(ctx, ctx.tensor("input"), list(ctx.const("pad")))


def pad_module(ctx: RuleContext) -> TensorLayout:
    """ZeroPad/ConstantPad/ReflectionPad/ReplicationPad/CircularPad modules (``padding`` attribute)."""
    return _padded(ctx, ctx.tensor("input"), list(ctx.module.padding))
