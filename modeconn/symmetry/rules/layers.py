"""Rules for layer modules: convolutions, linear layers, norms, embeddings, PReLU."""

from __future__ import annotations

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.rules.common import activation, channel_axis
from modeconn.symmetry.spaces import Layout, TensorLayout

__all__ = [
    "conv",
    "conv_transpose",
    "linear",
    "bilinear",
    "batch_norm",
    "instance_norm",
    "layer_norm",
    "group_norm",
    "prelu",
    "embedding",
    "conv_output",
]


def conv_output(ctx: RuleContext, x: TensorLayout, cax: int, lout: Layout | None) -> TensorLayout:
    """A convolution's output: the batch axis as the input's, ``lout`` on the channel axis,
    spatial axes unpermuted; a pre-activation site."""
    out = ctx.out(tuple(x[a] if a < cax else (lout if a == cax else None) for a in range(x.ndim)))
    ctx.site("pre", out)
    return out


def conv(ctx: RuleContext) -> TensorLayout:
    """ConvNd: input channels follow ``weight`` axis 1 (per group); outputs are new units.

    Depthwise (groups == in_channels) couples each output block with its input channel.
    Grouped convolution admits group-preserving permutations only: we keep the ones that apply
    one permutation inside every input group (the input space is split per group and the
    pieces merged) and permute each output group independently.
    """
    m = ctx.module
    x = ctx.tensor("input")
    cax = channel_axis(ctx, x, m.weight.ndim - 2)
    cin, cout, g = m.in_channels, m.out_channels, m.groups
    lin = x[cax]
    if g == 1:
        ctx.bind_local("weight", 1, lin)
        lout = ctx.new_units(cout)
    elif g == cin:  # depthwise, channel multiplier cout // cin
        mult = cout // cin
        lout = None if lin is None else tuple((s, inner * mult) for s, inner in ctx.resolve(lin))
    else:
        per = cin // g
        pieces = ctx.split(lin, [per * i for i in range(1, g)])
        if pieces is not None:
            parts = [ctx.sub_layout(pieces, per * i, per * (i + 1)) for i in range(g)]
            ctx.bind_local("weight", 1, ctx.merge_all(parts, "grouped convolution ties its input groups"))
        per_out = cout // g
        lout = tuple(seg for i in range(g) for seg in ctx.new_units(per_out, f"{ctx.module_name}.g{i}"))
    ctx.bind_local("weight", 0, lout)
    ctx.bind_local("bias", 0, lout)
    return conv_output(ctx, x, cax, lout)


def conv_transpose(ctx: RuleContext) -> TensorLayout:
    """ConvTransposeNd (groups == 1): ``weight`` is (in, out, ...)."""
    m = ctx.module
    if m.groups != 1:
        return ctx.unsupported("grouped transposed convolution")
    x = ctx.tensor("input")
    cax = channel_axis(ctx, x, m.weight.ndim - 2)
    ctx.bind_local("weight", 0, x[cax])
    lout = ctx.new_units(m.out_channels)
    ctx.bind_local("weight", 1, lout)
    ctx.bind_local("bias", 0, lout)
    return conv_output(ctx, x, cax, lout)


def linear(ctx: RuleContext) -> TensorLayout:
    """Linear: the last axis is consumed by ``weight`` axis 1; outputs are new units."""
    x = ctx.tensor("input")
    ctx.bind_local("weight", 1, x[-1])
    lout = ctx.new_units(ctx.module.out_features)
    ctx.bind_local("weight", 0, lout)
    ctx.bind_local("bias", 0, lout)
    out = ctx.out(x.layouts[:-1] + (lout,))
    ctx.site("pre", out)
    return out


def bilinear(ctx: RuleContext) -> TensorLayout:
    """Bilinear: ``weight`` (out, in1, in2) reads both inputs' last axes; outputs are new units."""
    x1, x2 = ctx.tensor("input1"), ctx.tensor("input2")
    ctx.bind_local("weight", 1, x1[-1])
    ctx.bind_local("weight", 2, x2[-1])
    batch = [ctx.merge(a, b, "bilinear batch axes") for a, b in zip(x1.layouts[:-1], x2.layouts[:-1])]
    lout = ctx.new_units(ctx.module.out_features)
    ctx.bind_local("weight", 0, lout)
    ctx.bind_local("bias", 0, lout)
    out = ctx.out(batch + [lout])
    ctx.site("pre", out)
    return out


def _per_channel(ctx: RuleContext, x: TensorLayout, cax: int, names, site: str = "pre") -> TensorLayout:
    lay = x[cax]
    for name in names:
        ctx.bind_local(name, 0, lay)
    out = ctx.out(x.layouts)
    ctx.site(site, out)
    return out


def batch_norm(ctx: RuleContext, *, site: str = "pre") -> TensorLayout:
    """BatchNorm: per-channel statistics and affine parameters follow axis 1. Its output is
    an observation site of kind ``site`` (a norm fused with an activation is ``"post"``)."""
    return _per_channel(ctx, ctx.tensor("input"), 1, ("weight", "bias", "running_mean", "running_var"), site)


def instance_norm(ctx: RuleContext) -> TensorLayout:
    """InstanceNorm: like BatchNorm, on batched or unbatched input."""
    x = ctx.tensor("input")
    cax = 0 if x.ndim == ctx.module._get_no_batch_dim() else 1
    return _per_channel(ctx, x, cax, ("weight", "bias", "running_mean", "running_var"))


def layer_norm(ctx: RuleContext) -> TensorLayout:
    """LayerNorm / RMSNorm over the last k axes: statistics are permutation invariant; the
    affine parameters follow those axes."""
    x = ctx.tensor("input")
    k = len(ctx.module.normalized_shape)
    for i in range(k):
        ax = x.ndim - k + i
        ctx.bind_local("weight", i, x[ax])
        ctx.bind_local("bias", i, x[ax])
    out = ctx.out(x.layouts)
    ctx.site("pre", out)
    return out


def group_norm(ctx: RuleContext) -> TensorLayout:
    """GroupNorm: a permutation may move channels only within their group, so the channel
    space is split at the group boundaries (each group then permutes independently)."""
    m = ctx.module
    x = ctx.tensor("input")
    per = m.num_channels // m.num_groups
    lay = ctx.split(x[1], [per * i for i in range(1, m.num_groups)]) if m.num_groups > 1 else x[1]
    ctx.bind_local("weight", 0, lay)
    ctx.bind_local("bias", 0, lay)
    out = ctx.out(x.layouts[:1] + (lay,) + x.layouts[2:])
    ctx.site("pre", out)
    return out


def prelu(ctx: RuleContext) -> TensorLayout:
    """PReLU: one slope per channel (axis 1, or 0 for a vector), or one for all."""
    x = ctx.tensor("input")
    if ctx.module.weight.numel() > 1:
        ctx.bind_local("weight", 0, x[1 if x.ndim > 1 else 0])
    return activation(ctx)


def embedding(ctx: RuleContext) -> TensorLayout:
    """Embedding: rows are looked up by integer inputs, so they keep their order; each row's
    ``embedding_dim`` entries are a new space of units."""
    idx = ctx.tensor("input")
    lout = ctx.new_units(ctx.module.embedding_dim)
    ctx.bind_local("weight", 1, lout)
    rows = ctx.fixed_units(
        ctx.module.num_embeddings, "rows looked up by integer inputs", f"{ctx.module_name}.rows"
    )
    ctx.bind_local("weight", 0, rows)
    return ctx.out(idx.layouts + (lout,))
