"""Rules for shape and layout algebra: reshapes, axis permutations, size-1 axes, broadcasting,
repetition, concatenation and splitting, and ops whose result depends on the order along
one axis (flip, roll, cumulative sums), which fix that axis and pass the others through."""

from __future__ import annotations

import math
from collections.abc import Sequence

from modeconn.symmetry.context import RuleContext, relayout
from modeconn.symmetry.rules.common import axis_index
from modeconn.symmetry.spaces import Fold, Layout, TensorLayout, layout_size

__all__ = [
    "reshape",
    "permute_dims",
    "transpose",
    "matrix_transpose",
    "reverse_axes",
    "swap_last_two",
    "movedim",
    "unsqueeze",
    "squeeze",
    "expand",
    "repeat",
    "repeat_interleave",
    "cat",
    "stack",
    "split",
    "unbind",
    "unfold",
    "order_along",
]


def reshape(ctx: RuleContext) -> TensorLayout:
    """view/reshape/flatten/unflatten: match groups of input and output axes with equal
    products; merged axes combine their layouts (channel-major), anything else is fixed. An
    axis split in two (``(H·d)`` into ``(H, d)``: attention heads) gives each head its own units
    and the outer axis a head space; split further, the innermost sub-axis takes the units and
    all pieces share one permutation. Merging a heads axis with its units' axis undoes that."""
    if ctx.has("dtype"):  # x.view(torch.float16) reinterprets bytes
        return ctx.unsupported("a view as another dtype")
    out_shape = tuple(ctx.out_value)
    x = ctx.folded("input")
    groups = _axis_groups(x.shape, out_shape)
    fold, out_fold = x.fold, None
    kept = {gi[0]: gj[0] for gi, gj in groups if len(gi) == len(gj) == 1}  # axes that stay whole
    repeated = _repeated_heads(x, groups)
    if fold is not None and fold.outer is None and fold.dims in kept and fold.heads in kept:
        out_fold = Fold(kept[fold.heads], kept[fold.dims], fold.flat, repeat=fold.repeat)
    elif fold is not None and fold.outer is None and fold.dims in kept and repeated is not None:
        heads_axis, times = repeated
        out_fold = Fold(heads_axis, kept[fold.dims], fold.flat, repeat=fold.repeat * times)
    elif fold is not None and (
        fold.outer is not None or not any(gi == [fold.heads, fold.dims] and len(gj) == 1 for gi, gj in groups)
    ):
        x, fold = ctx.collapse(x), None
    out_layouts: list = [None] * len(out_shape)
    for gi, gj in groups:
        if fold is not None and out_fold is None and gi == [fold.heads, fold.dims]:
            out_layouts[gj[0]] = ctx.unfolded(fold, x.shape[fold.heads])
            continue
        in_lays = [x[a] for a in gi]
        if all(lay is None for lay in in_lays):
            continue
        in_sizes = [x.shape[a] for a in gi]
        out_sizes = [out_shape[b] for b in gj]
        if len(gj) == 1:
            out_layouts[gj[0]] = _merge_axes(ctx, in_lays, in_sizes)
        elif len(gi) == 1:
            heads = _into_heads(ctx, in_lays[0], out_sizes) if out_fold is None else None
            if heads is not None:
                head_layout, flat = heads
                nontrivial = [b for b in gj if out_shape[b] > 1]
                if len(nontrivial) == 3:  # (pieces, heads, dims)
                    out_layouts[nontrivial[1]] = head_layout
                    out_fold = Fold(nontrivial[1], nontrivial[2], flat, outer=nontrivial[0])
                else:
                    out_layouts[nontrivial[0]] = head_layout
                    out_fold = Fold(nontrivial[0], nontrivial[1], flat)
                continue
            for b, lay in zip(gj, _split_axis(ctx, in_lays[0], out_sizes)):
                out_layouts[b] = lay
        else:
            for lay in in_lays:
                ctx.fix(lay, "reshape mixes several axes into several axes")
    return ctx.out(out_layouts, fold=out_fold)


def _repeated_heads(x: TensorLayout, groups: list[tuple[list[int], list[int]]]) -> tuple[int, int] | None:
    """Where a reshape flattens a heads axis with the unpermuted axes right after it into one
    axis (``repeat_kv``: ``(B, G, r, S, d)`` to ``(B, G·r, S, d)``): (the output axis, how many
    times each head now stands in a row), or ``None``."""
    f = x.fold
    if f is None:
        return None
    for gi, gj in groups:
        if len(gj) == 1 and len(gi) > 1 and gi[0] == f.heads and f.dims not in gi:
            if all(x[a] is None for a in gi[1:]):
                return gj[0], math.prod(x.shape[a] for a in gi[1:])
    return None


def _axis_groups(ins: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """The runs of input and output axes with equal products a reshape maps onto each other
    (size-1 axes belong to none)."""
    groups = []
    i = j = 0
    while i < len(ins) or j < len(out_shape):
        # skip size-1 axes on either side: they carry nothing
        if i < len(ins) and ins[i] == 1:
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            j += 1
            continue
        if i >= len(ins) or j >= len(out_shape):
            break
        gi, gj = [i], [j]
        pi, pj = ins[i], out_shape[j]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(i)
                pi *= ins[i]
            else:
                j += 1
                gj.append(j)
                pj *= out_shape[j]
        i, j = i + 1, j + 1
        groups.append((gi, gj))
    return groups


def _into_heads(ctx: RuleContext, lay: Layout, sizes: list[int]) -> tuple | None:
    """An axis split into (heads, units per head), or (pieces, heads, units per head) for a
    fused q/k/v projection: each head keeps its own units, and the pieces' heads move
    together. Returns (the heads axis's layout, the flat layout of the units), or ``None`` for
    any other split (or units that are flattened)."""
    nontrivial = [k for k, n in enumerate(sizes) if n > 1]
    if len(nontrivial) not in (2, 3):
        return None
    lay = ctx.resolve(lay)
    if any(i != 1 for _, i in lay):
        return None
    pieces = sizes[nontrivial[0]] if len(nontrivial) == 3 else 1
    n_heads = sizes[nontrivial[-2]]
    blocks = ctx.heads(lay, pieces * n_heads)
    if blocks is None:
        return None
    head_layout = None
    for p in range(pieces):
        part = blocks[p * n_heads : (p + 1) * n_heads]
        first = ctx.resolve(part[0])[0][0]
        own = ctx.new_heads(part, f"{first.label.removesuffix('.weight')}:heads")
        head_layout = own if head_layout is None else ctx.merge(head_layout, own, "the pieces' heads")
    return head_layout, ctx.resolve(lay)


def _merge_axes(ctx: RuleContext, lays: list, sizes: list[int]) -> Layout | None:
    """Flatten consecutive axes into one: at most one of them may carry a layout (an axis whose
    spaces are all fixed already carries nothing that could move)."""
    lays = [None if ctx.is_fixed(lay) else lay for lay in lays]
    carrying = [k for k, lay in enumerate(lays) if lay is not None]
    if len(carrying) > 1:  # a heads axis flattened with its units in another order: heads stay put
        for k in [k for k in carrying if ctx.is_heads(lays[k])]:
            ctx.fix(lays[k], "a heads axis flattened with its units' axis in another order")
            lays[k] = None
        carrying = [k for k, lay in enumerate(lays) if lay is not None]
    if not carrying:
        return None
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


def _moved(ctx: RuleContext, x: TensorLayout, order: Sequence[int]) -> TensorLayout:
    if sorted(order) != list(range(x.ndim)):
        raise ValueError(f"{list(order)} is not an order of {x.ndim} axes")
    fold = x.fold.moved(order) if x.fold is not None else None
    return ctx.out([x[o] for o in order], fold=fold)


@relayout
def permute_dims(ctx: RuleContext) -> TensorLayout:
    """permute(dims): the layouts (and heads with their units) move with their axes."""
    x = ctx.folded("input")
    return _moved(ctx, x, [axis_index(int(d), x.ndim) for d in ctx.const("dims")])


@relayout
def transpose(ctx: RuleContext) -> TensorLayout:
    """transpose/swapaxes/swapdims of two axes."""
    x = ctx.folded("input")
    names = ("dim0", "dim1") if ctx.has("dim0") else ("axis0", "axis1")
    a, b = (axis_index(int(ctx.const(n)), x.ndim) for n in names)
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return _moved(ctx, x, order)


@relayout
def matrix_transpose(ctx: RuleContext) -> TensorLayout:
    """``t()``: the two axes of a matrix swap (a vector stays as it is)."""
    x = ctx.tensor("input")
    if x.ndim > 2:
        return ctx.unsupported("t() of a tensor with more than 2 dimensions")
    return _moved(ctx, x, list(range(x.ndim))[::-1])


@relayout
def reverse_axes(ctx: RuleContext) -> TensorLayout:
    """``x.T`` (aten.numpy_T) and ``x.H`` (aten.matrix_H): every axis in reverse order (the two
    of a matrix swap; a conjugate changes values, not their order)."""
    x = ctx.folded("input")
    return _moved(ctx, x, list(range(x.ndim))[::-1])


@relayout
def swap_last_two(ctx: RuleContext) -> TensorLayout:
    """``x.mT``, ``x.mH``, ``x.adjoint()``: the last two axes swap (a batch of matrices, each
    transposed; a conjugate changes values, not their order)."""
    x = ctx.folded("input")
    if x.ndim < 2:
        return ctx.unsupported("a matrix transpose of a tensor with fewer than 2 dimensions")
    return _moved(ctx, x, [*range(x.ndim - 2), x.ndim - 1, x.ndim - 2])


@relayout
def movedim(ctx: RuleContext) -> TensorLayout:
    """movedim/moveaxis(source, destination)."""
    x = ctx.folded("input")
    n = x.ndim
    src, dst = ctx.const("source"), ctx.const("destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [axis_index(s, n) for s in src], [axis_index(d, n) for d in dst]
    order: list = [None] * n
    for s, d in zip(src, dst):
        order[d] = s
    remaining = iter(a for a in range(n) if a not in src)
    return _moved(ctx, x, [o if o is not None else next(remaining) for o in order])


def unsqueeze(ctx: RuleContext) -> TensorLayout:
    """unsqueeze(dim): a new size-1 axis (heads and their units keep theirs)."""
    x = ctx.folded("input")
    d = axis_index(int(ctx.const("dim")), x.ndim + 1)
    layouts = list(x.layouts)
    layouts.insert(d, None)
    fold = x.fold.shifted(lambda a: a + (a >= d)) if x.fold is not None else None
    return ctx.out(layouts, uniform=x.uniform, fold=fold)


def squeeze(ctx: RuleContext) -> TensorLayout:
    """squeeze drops size-1 axes, which carry no layout (heads and their units keep theirs)."""
    x = ctx.folded("input")
    out_shape = tuple(ctx.out_value)
    kept = [a for a, n in enumerate(x.shape) if n != 1]
    if [x.shape[a] for a in kept] != [n for n in out_shape if n != 1]:
        return ctx.unsupported("squeeze changed more than size-1 axes")
    new_axis = dict(zip(kept, (b for b, n in enumerate(out_shape) if n != 1)))
    it = iter(x[a] for a in kept)
    fold = x.fold.shifted(new_axis.__getitem__) if x.fold is not None else None
    return ctx.out([None if n == 1 else next(it) for n in out_shape], uniform=x.uniform, fold=fold)


def expand(ctx: RuleContext) -> TensorLayout:
    """expand/expand_as/broadcast_to: only size-1 axes grow; leading axes may be added (heads
    and their units keep theirs)."""
    x = ctx.folded("input")
    out_shape = tuple(ctx.out_value)
    lead = len(out_shape) - x.ndim
    if lead < 0 or any(n not in (1, out_shape[lead + a]) for a, n in enumerate(x.shape)):
        return ctx.unsupported("an expansion that is not a broadcast")
    layouts = [None] * lead + [x[a] if x.shape[a] == out_shape[lead + a] else None for a in range(x.ndim)]
    fold = x.fold.shifted(lambda a: a + lead) if x.fold is not None else None
    return ctx.out(layouts, uniform=x.uniform, fold=fold)


def repeat(ctx: RuleContext) -> TensorLayout:
    """repeat/tile: each axis is its layout repeated ``k`` times (leading axes may be added)."""
    x = ctx.tensor("input")
    out_shape = tuple(ctx.out_value)
    lead = len(out_shape) - x.ndim
    if lead < 0 or any(out_shape[lead + a] % n for a, n in enumerate(x.shape) if n):
        return ctx.unsupported("a repetition that is not a whole number of copies")
    layouts = [None] * lead
    for a in range(x.ndim):
        k = out_shape[lead + a] // x.shape[a]
        layouts.append(None if x[a] is None else ctx.resolve(x[a]) * k)
    return ctx.out(layouts, uniform=x.uniform)


def repeat_interleave(ctx: RuleContext) -> TensorLayout:
    """repeat_interleave(repeats: int, dim): every unit repeated in place (``inner`` grows);
    along a heads axis, each head (with its units) stands ``repeats`` times in a row."""
    x = ctx.folded("input")
    repeats, dim = ctx.const("repeats"), ctx.const("dim")
    if not isinstance(repeats, int) or dim is None:
        return ctx.unsupported("repeat_interleave without an int repeat and a dim")
    d = axis_index(dim, x.ndim)
    fold = x.fold
    if fold is not None and d in (fold.dims, fold.outer):
        x, fold = ctx.collapse(x), None
    elif fold is not None and d == fold.heads:
        fold = Fold(fold.heads, fold.dims, fold.flat, fold.outer, fold.repeat * repeats)
    lay = None if x[d] is None else tuple((s, inner * repeats) for s, inner in ctx.resolve(x[d]))
    return ctx.out([lay if a == d else x[a] for a in range(x.ndim)], uniform=x.uniform, fold=fold)


def cat(ctx: RuleContext) -> TensorLayout:
    """cat along an axis: the result's layout there is the concatenation of the inputs' (a
    direct sum of their spaces); other axes are coupled."""
    tensors = ctx.tensors("tensors")
    out_shape = tuple(ctx.out_value)
    d = axis_index(int(ctx.const("dim")), len(out_shape))
    tensors = [t for t in tensors if t.ndim == len(out_shape)]  # legacy empty tensors are skipped
    layouts = []
    for a in range(len(out_shape)):
        if a != d:
            layouts.append(ctx.merge_all([t[a] for t in tensors if not t.uniform], "cat"))
            continue
        if all(t[a] is None for t in tensors):
            layouts.append(None)  # nothing along the cat axis could move
            continue
        segs: list = []
        for t in tensors:
            lay = t[a]
            if lay is None and t.shape[a]:
                lay = ctx.fixed_units(t.shape[a], "concatenated with an unpermutable tensor")
            segs.extend(ctx.resolve(lay) if lay is not None else ())
        layouts.append(tuple(segs))
    return ctx.out(layouts, uniform=all(t.uniform for t in tensors))


def stack(ctx: RuleContext) -> TensorLayout:
    """stack: a new axis over equally laid out tensors (their axes are coupled)."""
    tensors = ctx.tensors("tensors")
    out_shape = tuple(ctx.out_value)
    d = axis_index(int(ctx.const("dim")), len(out_shape))
    merged = [
        ctx.merge_all([t[a] for t in tensors if not t.uniform], "stack") for a in range(tensors[0].ndim)
    ]
    merged.insert(d, None)
    return ctx.out(merged, uniform=all(t.uniform for t in tensors))


def split(ctx: RuleContext) -> tuple:
    """split/chunk/tensor_split along an axis: the inverse of cat. Split along the units of
    heads (GPT-NeoX's ``(…, heads, 3·d)`` fused q/k/v, chunked into q, k and v), each piece
    keeps its heads: the same part of every head's units."""
    x = ctx.folded("input")
    outs = ctx.out_value
    d = axis_index(int(ctx.const("dim")), x.ndim)
    if x.fold is not None and x.fold.dims == d and type(outs) in (list, tuple):
        return type(outs)(_split_units(ctx, x, [shape[d] for shape in outs], outs))
    x = ctx.collapse(x)
    result, pos = [], 0
    for shape in outs:
        n = shape[d]
        lay = ctx.sub_layout(x[d], pos, pos + n)
        result.append(TensorLayout(shape, [lay if a == d else x[a] for a in range(x.ndim)], x.uniform))
        pos += n
    if pos != x.shape[d]:
        raise ValueError("the pieces do not cover the axis")
    return type(outs)(result) if type(outs) in (list, tuple) else tuple(result)


def _split_units(ctx: RuleContext, x: TensorLayout, sizes: list[int], outs: Sequence) -> list[TensorLayout]:
    """The pieces of a tensor split along its fold's units axis: piece ``p`` of every head (of
    every block of ``x.shape[dims]`` units in the fold's flat layout) makes the piece's flat
    layout, in the same order, so its heads are the same heads."""
    f = x.fold
    n = x.shape[f.dims]
    blocks = layout_size(f.flat) // n
    result, pos = [], 0
    for shape, size in zip(outs, sizes):
        parts = [ctx.sub_layout(f.flat, b * n + pos, b * n + pos + size, fence=False) for b in range(blocks)]
        flat = None if any(p is None for p in parts) else tuple(seg for p in parts for seg in p)
        fold = None if flat is None else Fold(f.heads, f.dims, flat, f.outer, f.repeat)
        result.append(TensorLayout(shape, x.layouts, x.uniform, fold))
        pos += size
    if pos != n:
        raise ValueError("the pieces do not cover the axis")
    return result


def unbind(ctx: RuleContext) -> tuple:
    """unbind(dim): each piece is one index along ``dim``, which must therefore keep its order
    (unbinding the pieces of a fused q/k/v cut into heads gives each piece its heads)."""
    x = ctx.folded("input")
    d = axis_index(int(ctx.const("dim")), x.ndim)
    f = x.fold
    if f is not None and f.outer == d:
        n = x.shape[d]
        size = layout_size(f.flat) // n
        lays = [x[a] for a in range(x.ndim) if a != d]
        shift = [a - (a > d) for a in range(x.ndim)]
        return tuple(
            TensorLayout(s, lays, x.uniform, Fold(shift[f.heads], shift[f.dims], part, repeat=f.repeat))
            for s, part in zip(
                ctx.out_value, (ctx.sub_layout(f.flat, i * size, (i + 1) * size) for i in range(n))
            )
        )
    x = ctx.collapse(x)
    ctx.fix(x[d], "unbind picks single units")
    lays = [x[a] for a in range(x.ndim) if a != d]
    return tuple(TensorLayout(s, lays, x.uniform) for s in ctx.out_value)


def unfold(ctx: RuleContext) -> TensorLayout:
    """Tensor.unfold(dimension, size, step): sliding windows along one axis, which keeps its order."""
    x = ctx.tensor("input")
    d = axis_index(int(ctx.const("dimension")), x.ndim)
    ctx.fix(x[d], "sliding windows over a permutable axis")
    return ctx.out([None if a == d else x[a] for a in range(x.ndim)] + [None])


def order_along(ctx: RuleContext) -> TensorLayout:
    """flip/roll/cumsum/cumprod: the result depends on the order along the op's axes, which are
    fixed; the other axes pass through (``dims=None`` means every axis)."""
    x = ctx.tensor("input")
    if ctx.has("dims"):
        raw = ctx.const("dims")
        raw = [raw] if isinstance(raw, int) else raw
        raw = range(x.ndim) if raw is None or len(raw) == 0 else raw
    else:
        raw = [ctx.const("dim")]
    axes = {axis_index(int(a), x.ndim) for a in raw}
    for a in axes:
        ctx.fix(x[a], f"depends on the order along axis {a}")
    if tuple(ctx.out_value) != x.shape:
        return ctx.unsupported("the op changed the shape")
    return ctx.out([None if a in axes else x[a] for a in range(x.ndim)])
