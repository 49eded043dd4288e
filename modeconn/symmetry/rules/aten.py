"""Rules for the ATen ops of a ``torch.export`` graph.

Most ATen ops are the functions fx records under another name — ``aten.linear`` is
``F.linear``, ``aten.add.Tensor`` is ``torch.add`` — with the same schema, so their rules are
the ones of :mod:`.functional`, :mod:`.shapes` and the others, keyed by the op's overload
packet (every overload of ``aten.add``). The rules here are for the forms only export
produces: slicing and selecting as ops (fx records ``x[:, 1:]``), and ``aten.embedding``, whose
weight comes before its indices.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator

import torch

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.rules import (
    attention,
    common,
    constants,
    functional,
    indexing,
    pooling,
    reductions,
    shapes,
)
from modeconn.symmetry.rules.common import axis_index
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["aten_table", "embedding", "select", "slice_"]


def slice_(ctx: RuleContext) -> TensorLayout:
    """aten.slice(input, dim, start, end, step): ``x[..., start:end:step]`` along one axis
    (heads and their units keep theirs unless the slice cuts their axes)."""
    x = ctx.folded("input")
    d = axis_index(int(ctx.const("dim")), x.ndim)
    start, end, step = ctx.const("start"), ctx.const("end"), int(ctx.const("step"))
    start, stop, step = slice(start, end, step).indices(x.shape[d])
    whole = step == 1 and (start, stop) == (0, x.shape[d])
    if x.fold is not None and not whole and d in (x.fold.heads, x.fold.dims, x.fold.outer):
        x = ctx.collapse(x)
    if step != 1:
        ctx.fix(x[d], "strided slicing")
        layout = None
    elif (start, stop) == (0, x.shape[d]):
        layout = x[d]
    else:
        layout = ctx.sub_layout(x[d], start, max(start, stop))
    return ctx.out([layout if a == d else x[a] for a in range(x.ndim)], uniform=x.uniform, fold=x.fold)


def select(ctx: RuleContext) -> TensorLayout:
    """aten.select(input, dim, index): ``x[..., index]``, which picks one unit of that axis."""
    x = ctx.tensor("input")
    d = axis_index(int(ctx.const("dim")), x.ndim)
    ctx.fix(x[d], "indexing picks a single unit")
    return ctx.out([x[a] for a in range(x.ndim) if a != d], uniform=x.uniform)


def embedding(ctx: RuleContext) -> TensorLayout:
    """aten.embedding(weight, indices): rows looked up by integer inputs keep their order."""
    w, idx = ctx.tensor("weight"), ctx.tensor("indices")
    ctx.fix(w[0], "rows looked up by integer inputs")
    ctx.mark_producer(w[1])
    return ctx.out(idx.layouts + (w[1],))


def _packets(*names: str) -> tuple[Hashable, ...]:
    return tuple(getattr(torch.ops.aten, n) for n in names if hasattr(torch.ops.aten, n))


# Every packet below is called by some case of tests/symmetry/rule_cases.py once exported
# (tests/symmetry/test_rule_table.py checks it, and that each case keeps its function).
_UNARY = ("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "selu", "celu", "gelu", "silu")
_UNARY += ("mish", "hardswish", "hardsigmoid", "softplus", "hardtanh", "sigmoid", "sigmoid_", "tanh")
_UNARY += ("tanh_", "exp", "exp_", "sqrt", "sqrt_", "rsqrt", "abs", "abs_", "neg", "neg_", "square")
_UNARY += ("sign", "erf", "log", "sin", "cos", "reciprocal", "clamp", "clamp_", "clip", "clamp_min")
_UNARY += ("log_sigmoid", "softshrink", "hardshrink", "threshold")
_BINARY = ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "maximum")
_BINARY += ("minimum", "masked_fill", "masked_fill_", "where", "lerp", "addcmul", "addcdiv", "eq", "ne")
_BINARY += ("lt", "le", "gt", "ge", "floor_divide", "remainder")
_REDUCTIONS = ("sum", "mean", "amax", "amin", "var", "std", "logsumexp", "prod", "nansum", "nanmean")
_REDUCTIONS += ("linalg_vector_norm",)


def aten_table() -> Iterator[tuple[Callable, tuple[Hashable, ...]]]:
    """``(rule, overload packets)`` pairs for the ATen ops torch.export records."""
    yield functional.f_linear, _packets("linear")
    yield functional.f_conv, _packets("conv1d", "conv2d", "conv3d")
    yield functional.f_batch_norm, _packets("batch_norm", "instance_norm")
    yield functional.f_layer_norm, _packets("layer_norm", "rms_norm")
    yield functional.f_group_norm, _packets("group_norm")
    yield functional.f_prelu, _packets("prelu")
    yield embedding, _packets("embedding")
    yield common.activation, _packets(*_UNARY)
    yield common.elementwise, _packets(*_BINARY)
    yield functional.along_axis, _packets("softmax", "log_softmax")
    yield common.passthrough, _packets("dropout", "alpha_dropout", "feature_dropout", "clone", "detach")
    yield common.passthrough, _packets("detach_", "to", "contiguous", "lift_fresh_copy", "type_as")
    # views and no-ops that keep every element where it is: ``x[...]``, ``+x``, lazy conj/neg bits
    yield common.passthrough, _packets("alias", "positive", "resolve_conj", "resolve_neg")
    yield attention.sdpa, _packets("scaled_dot_product_attention")
    yield attention.matmul, _packets("matmul", "bmm")
    yield attention.addmm, _packets("addmm", "baddbmm")
    yield reductions.reduction, _packets(*_REDUCTIONS)
    yield reductions.extremum, _packets("max", "min")
    yield shapes.reshape, _packets("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as")
    yield shapes.permute_dims, _packets("permute")
    yield shapes.transpose, _packets("transpose", "swapaxes", "swapdims")
    yield shapes.movedim, _packets("movedim", "moveaxis")
    yield shapes.matrix_transpose, _packets("t")
    yield shapes.reverse_axes, _packets("numpy_T", "matrix_H")  # x.T, x.H
    yield shapes.swap_last_two, _packets("mT", "mH", "adjoint")
    yield shapes.unsqueeze, _packets("unsqueeze")
    yield shapes.squeeze, _packets("squeeze")
    yield shapes.expand, _packets("expand", "expand_as", "broadcast_to")
    yield shapes.repeat, _packets("repeat", "tile")
    yield shapes.repeat_interleave, _packets("repeat_interleave")
    yield shapes.order_along, _packets("flip", "roll", "cumsum", "cumprod")
    yield shapes.cat, _packets("cat", "concat")
    yield shapes.stack, _packets("stack")
    yield shapes.split, _packets("split", "split_with_sizes", "chunk", "tensor_split")
    yield shapes.unbind, _packets("unbind")
    yield shapes.unfold, _packets("unfold")
    yield slice_, _packets("slice")
    yield select, _packets("select")
    yield indexing.narrow, _packets("narrow")
    yield indexing.index_tensor, _packets("index")
    yield common.metadata, _packets("sym_size")
    yield pooling.pool(1), _packets("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d")
    yield pooling.pool(2), _packets("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d")
    yield pooling.pool(1), _packets("max_pool1d_with_indices")
    yield pooling.pool(2), _packets("max_pool2d_with_indices")
    yield pooling.pool(3), _packets("max_pool3d_with_indices")
    yield pooling.pool(3), _packets("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d")
    yield pooling.pad, _packets("pad")
    yield constants.uniform_like, _packets("zeros_like", "ones_like", "full_like", "zeros", "ones", "full")
    yield constants.uniform_like, _packets("new_zeros", "new_ones", "new_full")
    yield constants.constant_like, _packets("empty_like", "empty", "new_empty")
    yield constants.noop, _packets("_assert_tensor_metadata", "_assert_scalar")
