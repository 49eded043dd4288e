"""The built-in permutation rules: one small function per op family.

Each rule receives a :class:`~modeconn.symmetry.discovery.RuleContext` for one graph node and
returns the annotation of the node's output. A rule must be *sound*: whatever it lets be
permuted must leave the model's function unchanged. When in doubt, a rule fixes (never guesses):
an op without a rule fixes every group it touches.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn.symmetry.discovery import TA, RuleContext
from modeconn.symmetry.spaces import Layout, layout_size

__all__ = ["register_builtin_rules", "elementwise", "passthrough"]

Ann = TA | None


# -- generic helpers --------------------------------------------------------------------------


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _broadcast(ctx: RuleContext, inputs: Sequence[Ann], why: str = "elementwise op") -> TA:
    """Elementwise op with numpy broadcasting: axes that line up (from the right) and have the
    output's size are coupled."""
    out_shape = tuple(ctx.out_value)
    layouts: list[Layout | None] = []
    for i in range(len(out_shape)):
        cands = []
        for t in inputs:
            if not isinstance(t, TA):
                continue
            j = t.ndim - len(out_shape) + i
            if j >= 0 and t.shape[j] == out_shape[i] and out_shape[i] != 1:
                cands.append(t[j])
        layouts.append(ctx.merge_all(cands, why) if cands else None)
    return ctx.out(layouts)


def elementwise(ctx: RuleContext) -> TA:
    """Any elementwise op of tensors and scalars (``add``, ``mul``, activations with extra args)."""
    if not isinstance(ctx.out_value, torch.Size):
        return None  # arithmetic on Python numbers (shapes)
    tensors = [ctx.ann(a) for a in (*ctx.args, *ctx.kwargs.values())]
    out = _broadcast(ctx, [t for t in tensors if isinstance(t, TA)])
    if ctx.node.target in (operator.add, torch.add, "add", "add_", operator.iadd):
        ctx.site("pre", out)
    return out


def activation(ctx: RuleContext) -> TA:
    """A pointwise nonlinearity: the output is a post-activation site."""
    out = elementwise(ctx)
    ctx.site("post", out)
    return out


def passthrough(ctx: RuleContext) -> Ann:
    """The output has the first argument's layouts (identity, dropout, ``contiguous``, ``to``)."""
    a = ctx.ann(ctx.arg(0, "input"))
    if isinstance(a, TA) and tuple(ctx.out_value) == a.shape:
        return a
    return ctx.unsupported("passthrough op changed the shape")


def non_tensor(ctx: RuleContext) -> None:
    """Ops that only read metadata (``size``, ``dim``, ``shape``): no constraint."""
    return None


# -- layers ------------------------------------------------------------------------------------


def _require_trivial(ctx: RuleContext, t: TA, axes: Sequence[int], why: str) -> None:
    for a in axes:
        ctx.fix(t[a], why)


def _conv_channel_axis(ctx: RuleContext, x: TA, weight_ndim: int) -> int:
    """The channel axis of a convolution's input (batched or not); its spatial axes must not
    carry a permutation, since the kernel mixes positions."""
    cax = 1 if x.ndim == weight_ndim else 0
    _require_trivial(ctx, x, [a for a in range(x.ndim) if a > cax], "spatial axis of a convolution")
    return cax


def _conv_output(ctx: RuleContext, x: TA, cax: int, lout: Layout | None) -> TA:
    out = ctx.out(tuple(lout if a == cax else None for a in range(x.ndim)))
    ctx.site("pre", out)
    return out


def conv(ctx: RuleContext) -> Ann:
    """ConvNd: input channels follow ``weight`` axis 1 (per group); outputs are new units.

    Depthwise (groups == in_channels) couples each output block with its input channel.
    Grouped convolution admits group-preserving permutations only: we keep the ones that apply
    one permutation inside every input group (the input space is split per group and the
    pieces merged) and permute each output group independently.
    """
    m = ctx.module
    x = ctx.tensor(0, "input")
    cax = _conv_channel_axis(ctx, x, m.weight.ndim)
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
    return _conv_output(ctx, x, cax, lout)


def conv_transpose(ctx: RuleContext) -> Ann:
    """ConvTransposeNd (groups == 1): ``weight`` is (in, out, ...)."""
    m = ctx.module
    if m.groups != 1:
        return ctx.unsupported("grouped transposed convolution")
    x = ctx.tensor(0, "input")
    cax = _conv_channel_axis(ctx, x, m.weight.ndim)
    ctx.bind_local("weight", 0, x[cax])
    lout = ctx.new_units(m.out_channels)
    ctx.bind_local("weight", 1, lout)
    ctx.bind_local("bias", 0, lout)
    return _conv_output(ctx, x, cax, lout)


def linear(ctx: RuleContext) -> TA:
    """Linear: the last axis is consumed by ``weight`` axis 1; outputs are new units."""
    m = ctx.module
    x = ctx.tensor(0, "input")
    ctx.bind_local("weight", 1, x[-1])
    lout = ctx.new_units(m.out_features)
    ctx.bind_local("weight", 0, lout)
    ctx.bind_local("bias", 0, lout)
    out = ctx.out(x.layouts[:-1] + (lout,))
    ctx.site("pre", out)
    return out


def bilinear_unsupported(ctx: RuleContext) -> Ann:
    return ctx.unsupported("bilinear layer")


def batch_norm(ctx: RuleContext) -> TA:
    """BatchNorm / InstanceNorm: per-channel statistics and affine parameters follow axis 1."""
    x = ctx.tensor(0, "input")
    cax = 1 if x.ndim > 1 else 0
    lay = x[cax]
    for name in ("weight", "bias", "running_mean", "running_var"):
        ctx.bind_local(name, 0, lay)
    out = ctx.out(x.layouts)
    ctx.site("pre", out)
    return out


def layer_norm(ctx: RuleContext) -> TA:
    """LayerNorm / RMSNorm over the last k axes: statistics are permutation invariant; the
    affine parameters follow those axes."""
    m = ctx.module
    x = ctx.tensor(0, "input")
    k = len(m.normalized_shape)
    for i in range(k):
        ax = x.ndim - k + i
        ctx.bind_local("weight", i, x[ax])
        ctx.bind_local("bias", i, x[ax])
    out = ctx.out(x.layouts)
    ctx.site("pre", out)
    return out


def group_norm(ctx: RuleContext) -> Ann:
    """GroupNorm: a permutation may move channels only within their group, so the channel
    space is split at the group boundaries (each group then permutes independently)."""
    m = ctx.module
    x = ctx.tensor(0, "input")
    per = m.num_channels // m.num_groups
    lay = ctx.split(x[1], [per * i for i in range(1, m.num_groups)]) if m.num_groups > 1 else x[1]
    ctx.bind_local("weight", 0, lay)
    ctx.bind_local("bias", 0, lay)
    out = ctx.out(x.layouts[:1] + (lay,) + x.layouts[2:])
    ctx.site("pre", out)
    return out


def prelu(ctx: RuleContext) -> TA:
    x = ctx.tensor(0, "input")
    if ctx.module.weight.numel() > 1:
        ctx.bind_local("weight", 0, x[1 if x.ndim > 1 else 0])
    out = ctx.out(x.layouts)
    ctx.site("post", out)
    return out


def embedding(ctx: RuleContext) -> TA:
    """Embedding: token indices in, a new space of ``embedding_dim`` units out."""
    lout = ctx.new_units(ctx.module.embedding_dim)
    ctx.bind_local("weight", 1, lout)
    shape = tuple(ctx.out_value)
    return ctx.out((None,) * (len(shape) - 1) + (lout,))


def multihead_attention(ctx: RuleContext) -> Ann:
    """nn.MultiheadAttention: the embedding axis of query/key/value and of the output are
    permutable, and so is each head's inner dimension: head ``h`` has one permutation shared by
    its rows of q and k (q·kᵀ sums over it) and one shared by its rows of v and the matching
    columns of ``out_proj``."""
    m = ctx.module
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return ctx.unsupported("MultiheadAttention with separate q/k/v projections, bias_k or add_zero_attn")
    q, k, v = (ctx.tensor(i, n) for i, n in enumerate(("query", "key", "value")))
    lin = ctx.merge_all([q[-1], k[-1], v[-1]], "attention projections share their input axis")
    ctx.bind_local("in_proj_weight", 1, lin)
    d = m.head_dim
    qk = [seg for h in range(m.num_heads) for seg in ctx.new_units(d, f"{ctx.module_name}.qk{h}")]
    vs = [seg for h in range(m.num_heads) for seg in ctx.new_units(d, f"{ctx.module_name}.v{h}")]
    internal = tuple(qk + qk + vs)
    ctx.bind_local("in_proj_weight", 0, internal)
    ctx.bind_local("in_proj_bias", 0, internal)
    ctx.bind(ctx.param("out_proj.weight"), 1, tuple(vs))
    lout = ctx.new_units(m.embed_dim)
    ctx.bind(ctx.param("out_proj.weight"), 0, lout)
    if m.out_proj.bias is not None:
        ctx.bind(ctx.param("out_proj.bias"), 0, lout)
    out_val = ctx.out_value
    attn = TA(out_val[0], q.layouts[:-1] + (lout,))
    weights = TA(out_val[1]) if isinstance(out_val[1], torch.Size) else None
    return (attn, weights)


# -- functional layers (params arrive as get_attr annotations) -----------------------------------


def f_linear(ctx: RuleContext) -> Ann:
    x, w = ctx.tensor(0, "input"), ctx.tensor(1, "weight")
    b = ctx.ann(ctx.arg(2, "bias"))
    ctx.merge(x[-1], w[1], "linear input")
    lout = w[0]
    if isinstance(b, TA):
        lout = ctx.merge(lout, b[0], "linear bias")
    ctx.mark_producer(lout)
    out = ctx.out(x.layouts[:-1] + (lout,))
    ctx.site("pre", out)
    return out


def f_conv(ctx: RuleContext) -> Ann:
    x, w = ctx.tensor(0, "input"), ctx.tensor(1, "weight")
    b = ctx.ann(ctx.arg(2, "bias"))
    groups = ctx.value(ctx.arg(6, "groups", 1))
    if groups != 1:
        return ctx.unsupported("functional grouped convolution")
    cax = _conv_channel_axis(ctx, x, w.ndim)
    ctx.merge(x[cax], w[1], "convolution input")
    lout = w[0]
    if isinstance(b, TA):
        lout = ctx.merge(lout, b[0], "convolution bias")
    ctx.mark_producer(lout)
    return _conv_output(ctx, x, cax, lout)


def _per_channel_arguments(ctx: RuleContext, x: TA, lay: Layout | None, params, why: str) -> TA:
    """Per-channel tensor arguments (statistics, affine parameters) follow channel axis 1."""
    for i, name in params:
        t = ctx.ann(ctx.arg(i, name))
        if isinstance(t, TA):
            lay = ctx.merge(lay, t[0], why)
    out = ctx.out(x.layouts[:1] + (lay,) + x.layouts[2:])
    ctx.site("pre", out)
    return out


def f_batch_norm(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    params = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    return _per_channel_arguments(ctx, x, x[1], params, "batch norm")


def f_layer_norm(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    k = len(ctx.value(ctx.arg(1, "normalized_shape")))
    layouts = list(x.layouts)
    for i, name in ((2, "weight"), (3, "bias")):
        t = ctx.ann(ctx.arg(i, name))
        if isinstance(t, TA):
            for j in range(k):
                ax = x.ndim - k + j
                layouts[ax] = ctx.merge(layouts[ax], t[j], "layer norm")
    out = ctx.out(layouts)
    ctx.site("pre", out)
    return out


def f_group_norm(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    g = ctx.value(ctx.arg(1, "num_groups"))
    c = x.shape[1]
    lay = ctx.split(x[1], [c // g * i for i in range(1, g)]) if g > 1 else x[1]
    return _per_channel_arguments(ctx, x, lay, ((2, "weight"), (3, "bias")), "group norm")


def sdpa(ctx: RuleContext) -> Ann:
    """scaled_dot_product_attention(q, k, v): q·kᵀ contracts the head dim of q and k (one
    permutation), the output's head dim is v's."""
    q, k, v = ctx.tensor(0, "query"), ctx.tensor(1, "key"), ctx.tensor(2, "value")
    if isinstance(ctx.ann(ctx.arg(3, "attn_mask")), TA):
        ctx.fix_all(ctx.ann(ctx.arg(3, "attn_mask")), "attention mask")
    ctx.merge(q[-1], k[-1], "q and k head dims")
    batch = [ctx.merge_all([q[a], k[a], v[a]], "attention batch axes") for a in range(q.ndim - 2)]
    ctx.merge(k[-2], v[-2], "attention keys")
    return ctx.out(batch + [q[-2], v[-1]])


def matmul(ctx: RuleContext) -> Ann:
    a, b = ctx.ann(ctx.arg(0, "input")), ctx.ann(ctx.arg(1, "other"))
    if not (isinstance(a, TA) and isinstance(b, TA)) or a.ndim < 2 or b.ndim < 2:
        return ctx.unsupported("matmul of vectors")
    ctx.merge(a[-1], b[-2], "contracted axis of a matmul")
    out_shape = tuple(ctx.out_value)
    nb = len(out_shape) - 2
    batch = _broadcast_layouts(
        ctx, [TA(a.shape[:-2], a.layouts[:-2]), TA(b.shape[:-2], b.layouts[:-2])], out_shape[:nb]
    )
    return ctx.out(batch + [a[-2], b[-1]])


def _broadcast_layouts(ctx: RuleContext, inputs: Sequence[TA], out_shape: Sequence[int]) -> list:
    layouts = []
    for i in range(len(out_shape)):
        cands = [
            t[t.ndim - len(out_shape) + i]
            for t in inputs
            if t.ndim - len(out_shape) + i >= 0 and t.shape[t.ndim - len(out_shape) + i] == out_shape[i]
        ]
        layouts.append(ctx.merge_all(cands, "broadcast") if cands and out_shape[i] != 1 else None)
    return layouts


# -- shape ops --------------------------------------------------------------------------------


def _dims(ctx: RuleContext, ndim: int, index: int = 1, name: str = "dim") -> list[int] | None:
    d = ctx.value(ctx.arg(index, name))
    if d is None:
        return None
    if isinstance(d, int):
        d = [d]
    return [_axis(int(a), ndim) for a in d]


def reduction(ctx: RuleContext) -> Ann:
    """sum/mean/max/amax/var/... over some axes: permutation invariant along them."""
    x = ctx.tensor(0, "input")
    dims = _dims(ctx, x.ndim)
    keep = bool(ctx.value(ctx.arg(2, "keepdim", False)))
    out_val = ctx.out_value
    if dims is None:  # full reduction
        return TA(out_val) if isinstance(out_val, torch.Size) else _reduction_tuple(ctx, out_val)
    layouts = [lay if a not in dims else None for a, lay in enumerate(x.layouts)]
    if not keep:
        layouts = [lay for a, lay in enumerate(layouts) if a not in dims]
    if isinstance(out_val, torch.Size):
        return ctx.out(layouts)
    # max/min with dim return (values, indices): indices along a reduced axis depend on order
    for d in dims:
        ctx.fix(x[d], "argmax/argmin indices depend on unit order")
    return tuple(TA(v, layouts) if isinstance(v, torch.Size) else None for v in out_val)


def _reduction_tuple(ctx: RuleContext, out_val) -> Ann:
    return tuple(TA(v) if isinstance(v, torch.Size) else None for v in out_val)


def softmax(ctx: RuleContext) -> Ann:
    """softmax/log_softmax along any axis are permutation equivariant."""
    x = ctx.tensor(0, "input")
    return ctx.out(x.layouts)


def reshape(ctx: RuleContext) -> Ann:
    """view/reshape/flatten/unflatten: match groups of input and output axes with equal
    products; merged axes combine their layouts (channel-major), split axes give the layout to
    the innermost sub-axis (all pieces share one permutation), anything else is fixed."""
    x = ctx.tensor(0, "input")
    return ctx.out(_reshape_layouts(ctx, x, tuple(ctx.out_value)))


def _reshape_layouts(ctx: RuleContext, x: TA, out_shape: tuple) -> list:
    ins = [(a, n) for a, n in enumerate(x.shape)]
    out_layouts: list = [None] * len(out_shape)
    i = j = 0
    while i < len(ins) or j < len(out_shape):
        # skip size-1 axes on either side: they carry nothing
        if i < len(ins) and ins[i][1] == 1:
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            j += 1
            continue
        if i >= len(ins) or j >= len(out_shape):
            break
        gi, gj = [i], [j]
        pi, pj = ins[i][1], out_shape[j]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(i)
                pi *= ins[i][1]
            else:
                j += 1
                gj.append(j)
                pj *= out_shape[j]
        i, j = i + 1, j + 1
        in_lays = [x[a] for a in gi]
        if all(lay is None for lay in in_lays):
            continue
        in_sizes = [x.shape[a] for a in gi]
        out_sizes = [out_shape[b] for b in gj]
        if len(gj) == 1:
            out_layouts[gj[0]] = _merge_axes(ctx, in_lays, in_sizes)
        elif len(gi) == 1:
            for b, lay in zip(gj, _split_axis(ctx, in_lays[0], out_sizes)):
                out_layouts[b] = lay
        else:
            for lay in in_lays:
                ctx.fix(lay, "reshape mixes several axes into several axes")
    return out_layouts


def _merge_axes(ctx: RuleContext, lays: list, sizes: list[int]) -> Layout | None:
    """Flatten consecutive axes into one: at most one of them may carry a layout."""
    carrying = [k for k, lay in enumerate(lays) if lay is not None]
    if len(carrying) > 1:
        for lay in lays:
            ctx.fix(lay, "flatten merges two permutable axes")
        return None
    k = carrying[0]
    inner = math.prod(sizes[k + 1 :])
    outer = math.prod(sizes[:k])
    if outer > 4096:
        ctx.fix(lays[k], "flatten repeats a permutable axis too often")
        return None
    base = tuple((s, i * inner) for s, i in ctx.resolve(lays[k]))
    return base * outer


def _split_axis(ctx: RuleContext, lay: Layout, sizes: list[int]) -> list:
    """Unflatten one axis into ``sizes``."""
    lay = ctx.resolve(lay)
    nontrivial = [k for k, n in enumerate(sizes) if n > 1]
    # exact inverse of a channel-major flatten: every segment has inner == product of trailing sizes
    for k in nontrivial:
        inner = math.prod(sizes[k + 1 :])
        outer = math.prod(sizes[:k])
        if outer == 1 and inner > 1 and all(i == inner for _, i in lay):
            out = [None] * len(sizes)
            out[k] = tuple((s, 1) for s, _ in lay)
            return out
    # otherwise the innermost non-trivial axis takes the units; all its repetitions share a permutation
    last = nontrivial[-1]
    n_last = sizes[last]
    pieces = ctx.split(lay, list(range(n_last, layout_size(lay), n_last)))
    if pieces is None or any(i != 1 for _, i in pieces):
        ctx.fix(lay, "reshape splits a flattened axis")
        return [None] * len(sizes)
    parts = [ctx.sub_layout(pieces, o, o + n_last) for o in range(0, layout_size(lay), n_last)]
    merged = ctx.merge_all(parts, "reshape into heads ties every head to one permutation")
    out = [None] * len(sizes)
    out[last] = merged
    return out


def flatten(ctx: RuleContext) -> Ann:
    return reshape(ctx)


def permute_axes(ctx: RuleContext) -> Ann:
    """permute/transpose/movedim/swapaxes: the layouts move with their axes."""
    x = ctx.tensor(0, "input")
    target = ctx.node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    rest = [ctx.value(a) for a in ctx.args[1:]]
    n = x.ndim
    order = list(range(n))
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        dims = dims or ctx.value(ctx.kwargs.get("dims"))
        order = [_axis(int(d), n) for d in dims]
    elif name in ("transpose", "swapaxes", "swapdims"):
        a, b = (
            _axis(int(d), n) for d in (rest or [ctx.value(ctx.kwargs["dim0"]), ctx.value(ctx.kwargs["dim1"])])
        )
        order[a], order[b] = order[b], order[a]
    elif name in ("t",):
        order = order[::-1]
    elif name == "movedim":
        src, dst = rest[0], rest[1]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src, dst = [_axis(s, n) for s in src], [_axis(d, n) for d in dst]
        order = [None] * n
        for s, d in zip(src, dst):
            order[d] = s
        remaining = iter(a for a in range(n) if a not in src)
        order = [o if o is not None else next(remaining) for o in order]
    else:
        return ctx.unsupported("axis permutation")
    return ctx.out([x[o] for o in order])


def unsqueeze(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    d = _axis(int(ctx.value(ctx.arg(1, "dim"))), x.ndim + 1)
    layouts = list(x.layouts)
    layouts.insert(d, None)
    return ctx.out(layouts)


def squeeze(ctx: RuleContext) -> Ann:
    """squeeze drops size-1 axes, which carry no layout."""
    x = ctx.tensor(0, "input")
    out_shape = tuple(ctx.out_value)
    kept = [lay for n, lay in zip(x.shape, x.layouts) if n != 1]
    if [n for n in x.shape if n != 1] != [n for n in out_shape if n != 1]:
        return ctx.unsupported("squeeze changed more than size-1 axes")
    it = iter(kept)
    return ctx.out([None if n == 1 else next(it) for n in out_shape])


def expand(ctx: RuleContext) -> Ann:
    """expand/expand_as/broadcast_to: only size-1 axes grow; leading axes may be added."""
    x = ctx.tensor(0, "input")
    out_shape = tuple(ctx.out_value)
    lead = len(out_shape) - x.ndim
    return ctx.out(
        [None] * lead + [x[a] if x.shape[a] == out_shape[lead + a] else None for a in range(x.ndim)]
    )


def repeat(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    out_shape = tuple(ctx.out_value)
    lead = len(out_shape) - x.ndim
    layouts = [None] * lead
    for a in range(x.ndim):
        k = out_shape[lead + a] // x.shape[a]
        layouts.append(None if x[a] is None else ctx.resolve(x[a]) * k)
    return ctx.out(layouts)


def cat(ctx: RuleContext) -> Ann:
    """cat along an axis: the result's layout there is the concatenation of the inputs' (a
    direct sum of their spaces); other axes are coupled."""
    tensors = [ctx.ann(t) for t in ctx.arg(0, "tensors")]
    if not all(isinstance(t, TA) for t in tensors):
        return ctx.unsupported("cat of non-tensors")
    out_shape = tuple(ctx.out_value)
    d = _axis(int(ctx.value(ctx.arg(1, "dim", 0))), len(out_shape))
    tensors = [t for t in tensors if t.ndim == len(out_shape)]  # legacy empty tensors are skipped
    layouts = []
    for a in range(len(out_shape)):
        if a != d:
            layouts.append(ctx.merge_all([t[a] for t in tensors], "cat"))
            continue
        segs: list = []
        for t in tensors:
            lay = t[a] if t[a] is not None or t.shape[a] == 1 else None
            if lay is None:
                lay = (
                    ctx.fixed_units(t.shape[a], "concatenated with an unpermutable tensor")
                    if t.shape[a]
                    else ()
                )
            segs.extend(ctx.resolve(lay))
        layouts.append(tuple(segs))
    return ctx.out(layouts)


def stack(ctx: RuleContext) -> Ann:
    tensors = [ctx.ann(t) for t in ctx.arg(0, "tensors")]
    if not all(isinstance(t, TA) for t in tensors):
        return ctx.unsupported("stack of non-tensors")
    out_shape = tuple(ctx.out_value)
    d = _axis(int(ctx.value(ctx.arg(1, "dim", 0))), len(out_shape))
    merged = [ctx.merge_all([t[a] for t in tensors], "stack") for a in range(tensors[0].ndim)]
    merged.insert(d, None)
    return ctx.out(merged)


def split(ctx: RuleContext) -> Ann:
    """split/chunk along an axis: the inverse of cat."""
    x = ctx.tensor(0, "input")
    outs = ctx.out_value
    name = ctx.node.target if isinstance(ctx.node.target, str) else ctx.node.target.__name__
    dim_index = 2 if name in ("split", "chunk", "tensor_split") else 1
    d = _axis(int(ctx.value(ctx.arg(dim_index, "dim", 0))), x.ndim)
    result, pos = [], 0
    for shape in outs:
        n = shape[d]
        lay = ctx.sub_layout(x[d], pos, pos + n)
        result.append(TA(shape, [lay if a == d else x[a] for a in range(x.ndim)]))
        pos += n
    return type(outs)(result) if type(outs) in (list, tuple) else tuple(result)


def unbind(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    d = _axis(int(ctx.value(ctx.arg(1, "dim", 0))), x.ndim)
    ctx.fix(x[d], "unbind picks single units")
    lays = [x[a] for a in range(x.ndim) if a != d]
    return tuple(TA(s, lays) for s in ctx.out_value)


def getitem(ctx: RuleContext) -> Ann:
    """``x[i]`` on a tuple/list picks an element; on a tensor, basic slicing keeps sub-layouts."""
    container, raw = ctx.arg(0), ctx.arg(1)
    a = ctx.ann(container)
    if not isinstance(a, TA):
        index = ctx.value(raw)
        if isinstance(a, (list, tuple)) and isinstance(index, (int, slice)):
            return a[index]
        return None if not isinstance(ctx.out_value, torch.Size) else ctx.unsupported("indexing a non-tensor")
    raw_items = raw if isinstance(raw, (tuple, list)) else (raw,)
    # a tensor's recorded value is its torch.Size (a tuple): look at the raw nodes, not the values
    if any(isinstance(ctx.ann(r), TA) for r in raw_items):
        return ctx.unsupported("advanced (tensor) indexing")
    idx = tuple(ctx.value(r) for r in raw_items)
    if any(isinstance(i, (list, type)) for i in idx):
        return ctx.unsupported("advanced (list) indexing")
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
                layouts.append(ctx.sub_layout(a[axis], start, stop))
            axis += 1
        else:
            return ctx.unsupported(f"indexing with {type(i).__name__}")
    layouts.extend(a[k] for k in range(axis, a.ndim))
    return ctx.out(layouts)


def pool(ctx: RuleContext) -> Ann:
    """Pooling/upsampling over spatial axes (module or function): channels pass through."""
    x = ctx.tensor(0, "input")
    out_val = ctx.out_value
    out_shape = out_val if isinstance(out_val, torch.Size) else out_val[0]
    cax = 1 if x.ndim >= 3 else 0
    if x.ndim == len(out_shape) - 0 and x.ndim < 3:
        cax = 0
    _require_trivial(ctx, x, [a for a in range(x.ndim) if a > cax], "pooled spatial axis")
    res = TA(out_shape, [x[a] if a <= cax else None for a in range(len(out_shape))])
    if isinstance(out_val, torch.Size):
        return res
    return (res, TA(out_val[1]))  # return_indices: spatial indices, no channel dependence


def pad(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    widths = ctx.value(ctx.arg(1, "pad"))
    padded = [x.ndim - 1 - k for k in range(len(widths) // 2) if widths[2 * k] or widths[2 * k + 1]]
    _require_trivial(ctx, x, padded, "padded axis")
    return ctx.out([None if a in padded else x[a] for a in range(x.ndim)])


def normalize(ctx: RuleContext) -> Ann:
    """F.normalize divides by a norm over one axis: equivariant along it, elementwise elsewhere."""
    x = ctx.tensor(0, "input")
    return ctx.out(x.layouts)


def like(ctx: RuleContext) -> Ann:
    """zeros_like/ones_like/...: a constant tensor is unchanged by any permutation, so it may
    take the input's layouts."""
    x = ctx.tensor(0, "input")
    return ctx.out(x.layouts) if tuple(ctx.out_value) == x.shape else ctx.out([None] * len(ctx.out_value))


def new_tensor(ctx: RuleContext) -> Ann:
    """new_empty/new_zeros/...: only the dtype and device of the input are used."""
    return ctx.out([None] * len(ctx.out_value))


def repeat_interleave(ctx: RuleContext) -> Ann:
    x = ctx.tensor(0, "input")
    repeats, dim = ctx.value(ctx.arg(1, "repeats")), ctx.value(ctx.arg(2, "dim"))
    if not isinstance(repeats, int) or dim is None:
        return ctx.unsupported("repeat_interleave without an int repeat and a dim")
    d = _axis(dim, x.ndim)
    lay = None if x[d] is None else tuple((s, inner * repeats) for s, inner in ctx.resolve(x[d]))
    return ctx.out([lay if a == d else x[a] for a in range(x.ndim)])


def unfold_windows(ctx: RuleContext) -> Ann:
    """Tensor.unfold(dim, size, step): sliding windows along one (spatial) axis."""
    x = ctx.tensor(0, "input")
    d = _axis(int(ctx.value(ctx.arg(1, "dimension"))), x.ndim)
    ctx.fix(x[d], "sliding windows over a permutable axis")
    return ctx.out([None if a == d else x[a] for a in range(x.ndim)] + [None])


def stochastic_depth(ctx: RuleContext) -> Ann:
    """torchvision's stochastic depth: a per-sample scale, elementwise along channels."""
    x = ctx.tensor(0, "input")
    return ctx.out(x.layouts)


def noop_assert(ctx: RuleContext) -> None:
    return None


def std_conv(ctx: RuleContext) -> Ann:
    """timm's weight-standardized convolutions: standardization is per output channel, and
    ``gain`` (when present) scales output channels."""
    out = conv(ctx)
    if isinstance(out, TA):
        ctx.bind_local("gain", 0, out[1 if out.ndim == ctx.module.weight.ndim else 0])
    return out


def batch_norm_act(ctx: RuleContext) -> TA:
    """timm's BatchNormAct2d: BatchNorm, then dropout and an elementwise activation."""
    out = batch_norm(ctx)
    ctx.site("post", out)
    return out


# -- the table --------------------------------------------------------------------------------

_ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Hardtanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.GLU,
)
_PASSTHROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.LPPool1d,
    nn.LPPool2d,
)
_ACTIVATION_FUNCTIONS = (
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    torch.sigmoid,
    torch.tanh,
    F.softplus,
    F.hardtanh,
    F.softsign,
    F.logsigmoid,
    F.tanhshrink,
    torch.erf,
    torch.exp,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.square,
    torch.sign,
)
_ELEMENTWISE_FUNCTIONS = (
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    operator.iadd,
    operator.imul,
    operator.pow,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.pow,
    torch.maximum,
    torch.minimum,
    torch.where,
    torch.lerp,
    torch.addcmul,
)
_ACTIVATION_METHODS = (
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "clip",
    "exp",
    "sqrt",
    "rsqrt",
    "abs",
    "neg",
    "square",
    "sign",
    "pow",
    "hardtanh",
    "hardtanh_",
)
_ELEMENTWISE_METHODS = (
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "__add__",
    "__mul__",
    "__radd__",
    "__rmul__",
    "masked_fill",
    "lerp",
    "maximum",
    "minimum",
)
_PASSTHROUGH_METHODS = (
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "requires_grad_",
    "cuda",
    "cpu",
)
_PASSTHROUGH_FUNCTIONS = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    torch.clone,
    torch.Tensor.contiguous,
)
_REDUCTIONS = (
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "norm",
    "logsumexp",
    "prod",
    "nansum",
    "nanmean",
)
_NON_TENSOR_METHODS = ("size", "dim", "numel", "nelement", "ndimension", "get_device")


def register_builtin_rules(registry) -> None:
    """Fill ``registry`` (the ``rule`` plugin registry) with modeconn's table."""

    def add(key, rule) -> None:
        if key not in registry:  # torch exposes some functions under several names (F.relu_ is torch.relu_)
            registry.add(key, rule)

    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        add(cls, conv)
    for cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        add(cls, conv_transpose)
    add(nn.Linear, linear)
    add(nn.Bilinear, bilinear_unsupported)
    for cls in (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    ):
        add(cls, batch_norm)
    add(nn.LayerNorm, layer_norm)
    if hasattr(nn, "RMSNorm"):
        add(nn.RMSNorm, layer_norm)
    add(nn.GroupNorm, group_norm)
    add(nn.PReLU, prelu)
    add(nn.Embedding, embedding)
    add(nn.MultiheadAttention, multihead_attention)
    for cls in _ACTIVATION_MODULES:
        add(cls, activation if cls is not nn.GLU else _unsupported_glu)
    for cls in _PASSTHROUGH_MODULES:
        add(cls, passthrough)
    for cls in _POOL_MODULES:
        add(cls, pool)
    add(nn.Flatten, flatten)
    add(nn.Unflatten, reshape)
    add(nn.Softmax, softmax)
    add(nn.LogSoftmax, softmax)

    for fn in _ACTIVATION_FUNCTIONS:
        add(fn, activation)
    for fn in _ELEMENTWISE_FUNCTIONS:
        add(fn, elementwise)
    for fn in _PASSTHROUGH_FUNCTIONS:
        add(fn, passthrough)
    for name in _ACTIVATION_METHODS:
        add(f"method:{name}", activation)
    for name in _ELEMENTWISE_METHODS:
        add(f"method:{name}", elementwise)
    for name in _PASSTHROUGH_METHODS:
        add(f"method:{name}", passthrough)
    for name in _NON_TENSOR_METHODS:
        add(f"method:{name}", non_tensor)
    for name in _REDUCTIONS:
        add(f"method:{name}", reduction)
        if hasattr(torch, name):
            add(getattr(torch, name), reduction)
    for fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
        add(fn, softmax)
    add("method:softmax", softmax)
    add("method:log_softmax", softmax)
    for name in ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"):
        add(f"method:{name}", reshape)
    add(torch.reshape, reshape)
    add(torch.flatten, reshape)
    add(torch.unflatten, reshape)
    for name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "t"):
        add(f"method:{name}", permute_axes)
        if hasattr(torch, name):
            add(getattr(torch, name), permute_axes)
    add("method:unsqueeze", unsqueeze)
    add(torch.unsqueeze, unsqueeze)
    add("method:squeeze", squeeze)
    add(torch.squeeze, squeeze)
    for name in ("expand", "expand_as", "broadcast_to"):
        add(f"method:{name}", expand)
    add(torch.broadcast_to, expand)
    add("method:repeat", repeat)
    add("method:tile", repeat)
    add(torch.tile, repeat)
    add("method:repeat_interleave", repeat_interleave)
    add(torch.repeat_interleave, repeat_interleave)
    add("method:unfold", unfold_windows)
    add(F.normalize, normalize)
    for fn in (torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like):
        add(fn, like)
    for name in ("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"):
        add(f"method:{name}", new_tensor)
    add(torch.cat, cat)
    add(torch.concat, cat)
    add(torch.stack, stack)
    for name in ("split", "chunk", "tensor_split"):
        add(f"method:{name}", split)
        add(getattr(torch, name), split)
    add("method:unbind", unbind)
    add(torch.unbind, unbind)
    add(operator.getitem, getitem)
    add(builtins.getattr, _getattr)
    add(F.linear, f_linear)
    for fn in (F.conv1d, F.conv2d, F.conv3d):
        add(fn, f_conv)
    add(F.batch_norm, f_batch_norm)
    add(F.layer_norm, f_layer_norm)
    if hasattr(F, "rms_norm"):
        add(
            F.rms_norm, f_layer_norm
        )  # (input, normalized_shape, weight, eps): weight where layer_norm has it
    add(F.group_norm, f_group_norm)
    add(F.scaled_dot_product_attention, sdpa)
    add(torch.matmul, matmul)
    add(operator.matmul, matmul)
    add(torch.bmm, matmul)
    add("method:matmul", matmul)
    for fn in (
        F.max_pool1d,
        F.max_pool2d,
        F.max_pool3d,
        F.avg_pool1d,
        F.avg_pool2d,
        F.avg_pool3d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d,
        F.adaptive_max_pool1d,
        F.adaptive_max_pool2d,
        F.adaptive_max_pool3d,
        F.interpolate,
        F.upsample,
    ):
        add(fn, pool)
    add(F.pad, pad)
    add(torch._assert, noop_assert)
    _register_library_rules(add)


def _unsupported_glu(ctx: RuleContext) -> Ann:
    return ctx.unsupported("GLU halves the channel axis")


def _getattr(ctx: RuleContext) -> Ann:
    """``x.shape`` and friends are metadata; ``x.T`` or ``x.mT`` would need a rule."""
    attr = ctx.value(ctx.arg(1))
    if attr in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    if isinstance(ctx.out_value, torch.Size):
        return ctx.unsupported(f"tensor attribute {attr}")
    return None


def _register_library_rules(add) -> None:
    """Rules for torchvision's and timm's fx-wrapped functions and leaf modules."""
    try:
        from torchvision.ops import stochastic_depth as tv_sd

        add(tv_sd, stochastic_depth)
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.layers import BatchNormAct2d, Conv2dSame, ScaledStdConv2dSame, StdConv2dSame
    except ImportError:  # pragma: no cover
        return
    add(BatchNormAct2d, batch_norm_act)
    add(Conv2dSame, conv)  # "same" padding is spatial only
    add(StdConv2dSame, std_conv)
    add(ScaledStdConv2dSame, std_conv)
