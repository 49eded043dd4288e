"""Rules for layers called as functions (``F.linear(x, self.weight)``): the weights arrive as
graph attributes, each axis its own space, and the rule couples them with the activations."""

from __future__ import annotations

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.rules.common import axis_index, channel_axis
from modeconn.symmetry.rules.layers import conv_output
from modeconn.symmetry.spaces import Layout, TensorLayout

__all__ = [
    "f_linear",
    "f_conv",
    "f_batch_norm",
    "f_layer_norm",
    "f_group_norm",
    "f_embedding",
    "f_prelu",
    "along_axis",
]


def _with_bias(ctx: RuleContext, lout: Layout | None, why: str) -> Layout | None:
    b = ctx.optional_tensor("bias")
    return ctx.merge(lout, b[0], why) if b is not None else lout


def f_linear(ctx: RuleContext) -> TensorLayout:
    """F.linear(input, weight, bias): ``weight`` (out, in)."""
    x, w = ctx.tensor("input"), ctx.tensor("weight")
    if w.ndim != 2:
        return ctx.unsupported("F.linear with a weight that is not a matrix")
    ctx.merge(x[-1], w[1], "linear input")
    lout = _with_bias(ctx, w[0], "linear bias")
    ctx.mark_producer(lout)
    out = ctx.out(x.layouts[:-1] + (lout,))
    ctx.site("pre", out)
    return out


def f_conv(ctx: RuleContext) -> TensorLayout:
    """F.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups), ungrouped or
    depthwise with multiplier 1."""
    x, w = ctx.tensor("input"), ctx.tensor("weight")
    groups = ctx.const("groups")
    cax = channel_axis(ctx, x, w.ndim - 2)
    if groups == 1:
        ctx.merge(x[cax], w[1], "convolution input")
        lout = w[0]
    elif groups == x.shape[cax] == w.shape[0]:  # depthwise: output channel c reads input channel c
        lout = ctx.merge(x[cax], w[0], "depthwise convolution")
    else:
        return ctx.unsupported("functional grouped convolution")
    lout = _with_bias(ctx, lout, "convolution bias")
    ctx.mark_producer(lout)
    return conv_output(ctx, x, cax, lout)


def _per_channel(ctx: RuleContext, x: TensorLayout, lay: Layout | None, names, why: str) -> TensorLayout:
    """Per-channel tensor arguments (statistics, affine parameters) follow channel axis 1."""
    for name in names:
        t = ctx.optional_tensor(name)
        if t is not None:
            lay = ctx.merge(lay, t[0], why)
    out = ctx.out(x.layouts[:1] + (lay,) + x.layouts[2:])
    ctx.site("pre", out)
    return out


def f_batch_norm(ctx: RuleContext) -> TensorLayout:
    """F.batch_norm / F.instance_norm: statistics and affine parameters per channel (axis 1)."""
    x = ctx.tensor("input")
    names = ("running_mean", "running_var", "weight", "bias")
    return _per_channel(ctx, x, x[1], names, "batch norm")


def f_layer_norm(ctx: RuleContext) -> TensorLayout:
    """F.layer_norm / F.rms_norm over the last ``len(normalized_shape)`` axes."""
    x = ctx.tensor("input")
    shape = ctx.const("normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    layouts = list(x.layouts)
    for name in ("weight", "bias"):
        t = ctx.optional_tensor(name)
        if t is not None:
            for j in range(k):
                ax = x.ndim - k + j
                layouts[ax] = ctx.merge(layouts[ax], t[j], "layer norm")
    out = ctx.out(layouts)
    ctx.site("pre", out)
    return out


def f_group_norm(ctx: RuleContext) -> TensorLayout:
    """F.group_norm: channels move only within their group (see the GroupNorm rule)."""
    x = ctx.tensor("input")
    g = ctx.const("num_groups")
    c = x.shape[1]
    lay = ctx.split(x[1], [c // g * i for i in range(1, g)]) if g > 1 else x[1]
    return _per_channel(ctx, x, lay, ("weight", "bias"), "group norm")


def f_embedding(ctx: RuleContext) -> TensorLayout:
    """F.embedding(input, weight): rows looked up by integer inputs keep their order."""
    idx, w = ctx.tensor("input"), ctx.tensor("weight")
    ctx.fix(w[0], "rows looked up by integer inputs")
    ctx.mark_producer(w[1])
    return ctx.out(idx.layouts + (w[1],))


def f_prelu(ctx: RuleContext) -> TensorLayout:
    """F.prelu(input, weight): one slope per channel (axis 1), or one for all."""
    x, w = ctx.tensor("input"), ctx.tensor("weight")
    if w.shape[0] > 1:
        ctx.merge(x[1 if x.ndim > 1 else 0], w[0], "PReLU slope")
    out = ctx.out(x.layouts)
    ctx.site("post", out)
    return out


def along_axis(ctx: RuleContext) -> TensorLayout:
    """Ops that act along one axis and commute with permutations of it and of all others
    (softmax, log_softmax, F.normalize): the layouts pass through."""
    x = ctx.tensor("input")
    if ctx.has("dim") and ctx.const("dim") is not None:
        axis_index(ctx.const("dim"), x.ndim)  # an invalid axis is not understood
    return ctx.out(x.layouts)
