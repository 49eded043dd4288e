"""Rules for attention and matrix products: ``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``, ``matmul``/``bmm``/``@`` and ``addmm``/``baddbmm``.

Attention is equivariant along the query tokens and invariant under one permutation of the
key and value tokens together, unless a causal or explicit mask ties tokens to positions.
"""

from __future__ import annotations

import torch

from modeconn.symmetry.context import RuleContext, Unsupported
from modeconn.symmetry.rules.common import broadcast
from modeconn.symmetry.spaces import Layout, TensorLayout

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
    if batch is not None:
        lw[0] = lb
    return (result, TensorLayout(weights, lw))


def sdpa(ctx: RuleContext) -> TensorLayout:
    """scaled_dot_product_attention(q, k, v): q·kᵀ contracts the head dim of q and k (one
    permutation); keys and values share their token axis; the output's head dim is v's."""
    q, k, v = ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value")
    mask = ctx.optional_tensor("attn_mask")
    if mask is not None or ctx.const("is_causal"):
        ctx.fix_all(mask, "attention mask")
        for t in (q, k, v):
            ctx.fix(t[-2], "attention masks tie tokens to positions")
    ctx.merge(q[-1], k[-1], "q and k head dims")
    batch = [ctx.merge_all([q[a], k[a], v[a]], "attention batch axes") for a in range(q.ndim - 2)]
    ctx.merge(k[-2], v[-2], "keys and values are one sequence")
    return ctx.out(batch + [q[-2], v[-1]])


def _product(ctx: RuleContext, a: TensorLayout, b: TensorLayout, na: str, nb: str) -> list[Layout | None]:
    """The layouts of ``a @ b`` for matrices (or batches of them): the contracted axis couples,
    batch axes broadcast. A product with a parameter is a linear layer: its outputs are units."""
    if a.ndim < 2 or b.ndim < 2:
        raise Unsupported("a matrix product with a vector")
    ctx.merge(a[-1], b[-2], "contracted axis of a matrix product")
    out_shape = tuple(ctx.out_value)
    nb_ = len(out_shape) - 2
    batch = broadcast(
        ctx,
        [TensorLayout(a.shape[:-2], a.layouts[:-2]), TensorLayout(b.shape[:-2], b.layouts[:-2])],
        out_shape[:nb_],
        "matrix product batch axes",
    )
    if ctx.is_state(ctx.args[nb]):
        ctx.mark_producer(b[-1])
    if ctx.is_state(ctx.args[na]):
        ctx.mark_producer(a[-2])
    return batch + [a[-2], b[-1]]


def matmul(ctx: RuleContext) -> TensorLayout:
    """matmul/bmm/``@`` of matrices (or batches of them)."""
    other = "mat2" if ctx.has("mat2") else "other"
    layouts = _product(ctx, ctx.tensor("input"), ctx.tensor(other), "input", other)
    return ctx.out(layouts)


def addmm(ctx: RuleContext) -> TensorLayout:
    """addmm/baddbmm(input, m1, m2) = β·input + α·(m1 @ m2): a matrix product plus a broadcast
    term (Hugging Face GPT-2's Conv1D: ``addmm(bias, x, weight)``)."""
    n1, n2 = ("mat1", "mat2") if ctx.has("mat1") else ("batch1", "batch2")
    layouts = _product(ctx, ctx.tensor(n1), ctx.tensor(n2), n1, n2)
    prod = TensorLayout(ctx.out_value, layouts)
    return ctx.out(broadcast(ctx, [prod, ctx.tensor("input")], ctx.out_value, "added term"))
