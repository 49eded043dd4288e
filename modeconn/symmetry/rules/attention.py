"""Rules for attention and matrix products: ``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``, ``matmul``/``bmm``/``@`` and ``addmm``/``baddbmm``.

Attention is equivariant along the query tokens and invariant under one permutation of the
key and value tokens together, unless a causal or explicit mask ties tokens to positions.
"""

from __future__ import annotations

import torch

from modeconn.symmetry.context import RuleContext, Unsupported
from modeconn.symmetry.rules.common import broadcast
from modeconn.symmetry.spaces import Fold, Layout, TensorLayout

__all__ = ["multihead_attention", "sdpa", "matmul", "addmm"]


def multihead_attention(ctx: RuleContext) -> tuple:
    """nn.MultiheadAttention: the embedding axis of query/key/value and of the output are
    permutable, and so is each head's inner dimension: head ``h`` has one permutation shared by
    its rows of q and k (q·kᵀ sums over it) and one shared by its rows of v and the matching
    columns of ``out_proj``."""
    m = ctx.module
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return ctx.unsupported("MultiheadAttention with separate q/k/v projections, bias_k or add_zero_attn")
    q, k, v = ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value")
    lin = ctx.merge_all([q[-1], k[-1], v[-1]], "attention projections share their input axis")
    ctx.bind_local("in_proj_weight", 1, lin)
    d = m.head_dim
    qk_heads = [ctx.new_units(d, f"{ctx.module_name}.qk{h}") for h in range(m.num_heads)]
    v_heads = [ctx.new_units(d, f"{ctx.module_name}.v{h}") for h in range(m.num_heads)]
    heads = ctx.merge(
        ctx.new_heads(qk_heads, f"{ctx.module_name}:heads"),
        ctx.new_heads(v_heads, f"{ctx.module_name}:heads"),
        "a head's q·k and v·o units move together",
    )
    qk = [seg for h in qk_heads for seg in h]
    vs = [seg for h in v_heads for seg in h]
    internal = tuple(qk + qk + vs)
    ctx.bind_local("in_proj_weight", 0, internal)
    ctx.bind_local("in_proj_bias", 0, internal)
    ctx.bind(ctx.param("out_proj.weight"), 1, tuple(vs))
    lout = ctx.new_units(m.embed_dim)
    ctx.bind(ctx.param("out_proj.weight"), 0, lout)
    if m.out_proj.bias is not None:
        ctx.bind(ctx.param("out_proj.bias"), 0, lout)
    # (L, N, E) or batch_first (N, L, E), or unbatched (L, E)
    tok = 0 if q.ndim == 2 or not m.batch_first else 1
    batch = None if q.ndim == 2 else 1 - tok
    masked = any(ctx.optional_tensor(n) is not None for n in ("key_padding_mask", "attn_mask"))
    if masked or ctx.const("is_causal"):
        for t in (q, k, v):
            ctx.fix(t[tok], "attention masks tie tokens to positions")
        for name in ("key_padding_mask", "attn_mask"):
            ctx.fix_all(ctx.optional_tensor(name), "attention mask")
    keys = ctx.merge(k[tok], v[tok], "keys and values are one sequence")
    lb = None if batch is None else ctx.merge_all([q[batch], k[batch], v[batch]], "attention batch axes")
    attn = [None] * q.ndim
    attn[tok], attn[-1] = q[tok], lout
    if batch is not None:
        attn[batch] = lb
    out, weights = ctx.out_value
    result = TensorLayout(out, attn)
    if not isinstance(weights, torch.Size):
        return (result, None)
    # weights: (N, L, S), or (N, heads, L, S) with average_attn_weights=False; unbatched without N
    lw = [None] * len(weights)
    lw[-2], lw[-1] = q[tok], keys
    if len(weights) == q.ndim + 1:  # per head (average_attn_weights=False)
        lw[-3] = heads
    if batch is not None:
        lw[0] = lb
    return (result, TensorLayout(weights, lw))


def sdpa(ctx: RuleContext) -> TensorLayout:
    """scaled_dot_product_attention(q, k, v): q·kᵀ contracts the head dim of q and k (one
    permutation); keys and values share their token axis; the output's head dim is v's. With
    key/value heads repeated for the query heads that share them (grouped-query attention),
    the key/value heads move as blocks together with their query heads."""
    q, k, v = ctx.folded("query"), ctx.folded("key"), ctx.folded("value")
    mask = ctx.optional_tensor("attn_mask")
    if mask is not None or ctx.const("is_causal"):
        for t in (q, k, v):
            ctx.fix(t[-2], "attention masks tie tokens to positions")
        for lay in mask.layouts[-2:] if mask is not None else ():
            ctx.fix(lay, "attention masks tie tokens to positions")
    last = q.ndim - 1
    shared = _grouped_query(ctx, q, k, v)
    if shared is not None:
        axis, q, k, v, fold = shared
        batch = [
            q[a] if a == axis else ctx.merge_all([q[a], k[a], v[a]], "attention batch axes")
            for a in range(q.ndim - 2)
        ]
        ctx.merge(k[-2], v[-2], "keys and values are one sequence")
        return ctx.out(_masked(ctx, batch, mask) + [q[-2], v[-1]], fold=fold)
    if any(_shares_kv_heads(ctx, q[a], k[a]) or q.shape[a] != k.shape[a] for a in range(q.ndim - 2)):
        for t in (q, k, v):
            for a in range(t.ndim - 2):
                if ctx.is_heads(t[a]):
                    ctx.fix(t[a], "grouped-query attention: key/value heads shared by several query heads")
    if _units_last(q) and _units_last(k) and (q.fold.heads, q.shape) == (k.fold.heads, k.shape):
        ctx.merge(q.fold.flat, k.fold.flat, "each head's q and k dims")
    else:
        q, k = ctx.collapse(q), ctx.collapse(k)
        ctx.merge(q[-1], k[-1], "q and k head dims")
    fold = Fold(v.fold.heads, last, v.fold.flat, repeat=v.fold.repeat) if _units_last(v) else None
    v = v if fold is not None else ctx.collapse(v)
    batch = [ctx.merge_all([q[a], k[a], v[a]], "attention batch axes") for a in range(q.ndim - 2)]
    ctx.merge(k[-2], v[-2], "keys and values are one sequence")
    return ctx.out(_masked(ctx, batch, mask) + [q[-2], v[-1]], fold=fold)


def _masked(ctx: RuleContext, batch: list[Layout | None], mask: TensorLayout | None) -> list[Layout | None]:
    """The scores' batch axes (heads among them) coupled with the mask's, which it broadcasts
    against: a bias per head (T5's relative positions, ALiBi) moves with the heads, or holds
    them in place."""
    if mask is None or mask.uniform:
        return batch
    lead = len(batch) - max(mask.ndim - 2, 0)
    if lead < 0:
        raise Unsupported("an attention mask with more batch axes than the scores")
    return [
        lay if a < lead or mask.shape[a - lead] == 1 else ctx.merge(lay, mask[a - lead], "attention mask")
        for a, lay in enumerate(batch)
    ]


def _grouped_query(ctx: RuleContext, q: TensorLayout, k: TensorLayout, v: TensorLayout) -> tuple | None:
    """Grouped-query attention whose structure the layouts show: along the query heads' axis,
    each key and value head stands ``r`` times in a row (``repeat_kv``). Couples each query
    head's dims with its key head's (or all q and k dims, when a rule before merged them
    across heads), the key heads with the value heads, and the query heads with both
    (:meth:`RuleContext.share_heads`). Returns (the heads axis, q, k, v as used, the output's
    fold), or ``None`` (nothing done) for any other attention."""
    axes = [a for a in range(q.ndim - 2) if ctx.is_heads(q[a]) and ctx.is_heads(k[a]) and ctx.is_heads(v[a])]
    if len(axes) != 1:
        return None
    axis = axes[0]
    r = _repeat(ctx, k[axis])
    n = q.shape[axis]
    if _repeat(ctx, q[axis]) != 1 or r in (None, 1) or _repeat(ctx, v[axis]) != r:
        return None
    if not (n == k.shape[axis] == v.shape[axis]) or any(
        t.fold is not None and (t.fold.heads, t.fold.repeat) != (axis, rep)
        for t, rep in ((q, 1), (k, r), (v, r))
    ):
        return None
    q_heads = ctx.heads(q.fold.flat, n) if _units_last(q) else None
    k_heads = ctx.heads(k.fold.flat, n // r) if _units_last(k) else None
    if q_heads is not None and k_heads is not None:
        for h in range(n):
            ctx.merge(q_heads[h], k_heads[h // r], "a query head's dims and its key head's")
    else:
        q, k = ctx.collapse(q), ctx.collapse(k)
        ctx.merge(q[-1], k[-1], "q and k head dims")
    fold = Fold(axis, q.ndim - 1, v.fold.flat, repeat=r) if _units_last(v) else None
    v = v if fold is not None else ctx.collapse(v)
    ctx.share_heads(q[axis], ctx.merge(k[axis], v[axis], "key and value heads"), r)
    return axis, q, k, v, fold


def _repeat(ctx: RuleContext, heads: Layout | None) -> int | None:
    """How many times in a row each head of a heads axis stands, if the same for all."""
    inner = {i for _, i in ctx.resolve(heads) or ()}
    return inner.pop() if len(inner) == 1 else None


def _shares_kv_heads(ctx: RuleContext, q: Layout | None, k: Layout | None) -> bool:
    """Whether key heads repeated for several query heads meet the query heads (``repeat_kv``)."""
    if not (ctx.is_heads(q) and ctx.is_heads(k)):
        return False
    return [i for _, i in ctx.resolve(q)] != [i for _, i in ctx.resolve(k)]


def _units_last(t: TensorLayout) -> bool:
    """Whether ``t`` holds per-head units on its last axis, its heads on a batch axis."""
    f = t.fold
    return f is not None and f.outer is None and f.dims == t.ndim - 1 and f.heads < t.ndim - 2


def _product(ctx: RuleContext, a: TensorLayout, b: TensorLayout, na: str, nb: str) -> list[Layout | None]:
    """The layouts of ``a @ b`` for matrices (or batches of them): the contracted axis couples,
    batch axes broadcast. A product with a parameter is a linear layer: its outputs are units."""
    if a.ndim < 2 or b.ndim < 2:
        raise Unsupported("a matrix product with a vector")
    ctx.merge(a[-1], b[-2], "contracted axis of a matrix product")
    batch = _batch(ctx, a, b, tuple(ctx.out_value))
    if ctx.is_state(ctx.args[nb]):
        ctx.mark_producer(b[-1])
    if ctx.is_state(ctx.args[na]):
        ctx.mark_producer(a[-2])
    return batch + [a[-2], b[-1]]


def matmul(ctx: RuleContext) -> TensorLayout:
    """matmul/bmm/``@`` of matrices (or batches of them). Per-head units stay apart in
    attention's two products: ``q @ kᵀ`` (each head's q and k dims contracted) and
    ``weights @ v`` (the result keeps v's)."""
    other = "mat2" if ctx.has("mat2") else "other"
    a, b = ctx.folded("input"), ctx.folded(other)
    out_shape = tuple(ctx.out_value)
    n = len(out_shape)
    grouped = _grouped_product(ctx, a, b, out_shape)
    if grouped is not None:
        return grouped
    if a.ndim == b.ndim == n and (a.fold is not None or b.fold is not None):
        fa, fb = a.fold, b.fold
        if (
            fa
            and fb
            and fa.outer is None
            and fb.outer is None
            and fa.dims == n - 1
            and fb.dims == n - 2
            and fa.heads == fb.heads < n - 2
        ):
            ctx.merge(fa.flat, fb.flat, "each head's q and k dims")
            return ctx.out(_batch(ctx, a, b, out_shape) + [a[-2], b[-1]])
        if fa is None and _units_last(b):
            ctx.merge(a[-1], b[-2], "contracted axis of a matrix product")
            fold = Fold(b.fold.heads, n - 1, b.fold.flat, repeat=b.fold.repeat)
            return ctx.out(_batch(ctx, a, b, out_shape) + [a[-2], None], fold=fold)
    layouts = _product(ctx, ctx.collapse(a), ctx.collapse(b), "input", other)
    return ctx.out(layouts)


def _grouped_product(
    ctx: RuleContext, a: TensorLayout, b: TensorLayout, out_shape: tuple
) -> TensorLayout | None:
    """Grouped-query attention's products, ``q @ kᵀ`` and ``weights @ v``, where along the
    query heads' axis of ``a`` each head of ``b`` stands ``r`` times in a row (``repeat_kv``):
    as in :func:`sdpa`, the query heads move with the key/value heads they share. ``None``
    (nothing done) for any other product."""
    n = len(out_shape)
    if not (a.ndim == b.ndim == n > 2) or a.shape[:-2] != b.shape[:-2] or a.shape[:-2] != out_shape[:-2]:
        return None
    axes = [x for x in range(n - 2) if ctx.is_heads(a[x]) and ctx.is_heads(b[x])]
    if len(axes) != 1:
        return None
    axis = axes[0]
    r = _repeat(ctx, b[axis])
    if (
        _repeat(ctx, a[axis]) != 1
        or r in (None, 1)
        or any(
            t.fold is not None and (t.fold.heads, t.fold.repeat, t.fold.outer) != (axis, rep, None)
            for t, rep in ((a, 1), (b, r))
        )
    ):
        return None
    fa, fb, fold = a.fold, b.fold, None
    if fa is not None and fb is not None and (fa.dims, fb.dims) == (n - 1, n - 2):  # q @ kᵀ
        q_heads, k_heads = ctx.heads(fa.flat, a.shape[axis]), ctx.heads(fb.flat, a.shape[axis] // r)
        if q_heads is None or k_heads is None:
            return None
        for h, units in enumerate(q_heads):
            ctx.merge(units, k_heads[h // r], "a query head's dims and its key head's")
    elif fa is None and _units_last(b):  # weights @ v
        ctx.merge(a[-1], b[-2], "contracted axis of a matrix product")
        fold = Fold(axis, n - 1, fb.flat, repeat=r)
    else:
        a, b = ctx.collapse(a), ctx.collapse(b)
        ctx.merge(a[-1], b[-2], "contracted axis of a matrix product")
    ctx.share_heads(a[axis], b[axis], r)
    batch = [a[x] if x == axis else ctx.merge(a[x], b[x], "matrix product batch axes") for x in range(n - 2)]
    return ctx.out(batch + [a[-2], None if fold is not None else b[-1]], fold=fold)


def _batch(ctx: RuleContext, a: TensorLayout, b: TensorLayout, out_shape: tuple) -> list[Layout | None]:
    nb = len(out_shape) - 2
    return broadcast(
        ctx,
        [TensorLayout(a.shape[:-2], a.layouts[:-2]), TensorLayout(b.shape[:-2], b.layouts[:-2])],
        out_shape[:nb],
        "matrix product batch axes",
    )


def addmm(ctx: RuleContext) -> TensorLayout:
    """addmm/baddbmm(input, m1, m2) = β·input + α·(m1 @ m2): a matrix product plus a broadcast
    term (Hugging Face GPT-2's Conv1D: ``addmm(bias, x, weight)``)."""
    n1, n2 = ("mat1", "mat2") if ctx.has("mat1") else ("batch1", "batch2")
    layouts = _product(ctx, ctx.tensor(n1), ctx.tensor(n2), n1, n2)
    prod = TensorLayout(ctx.out_value, layouts)
    return ctx.out(broadcast(ctx, [prod, ctx.tensor("input")], ctx.out_value, "added term"))
