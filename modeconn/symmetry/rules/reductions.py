"""Rules for reductions: sums, means, extrema, variances and norms over some axes are
invariant to any permutation along them, so those axes' layouts are dropped and the others
pass through. ``max``/``min`` with a ``dim`` also return indices, which depend on the order
along it; ``torch.max(a, b)`` is the elementwise overload and is handled as such."""

from __future__ import annotations

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.rules.common import axis_index, elementwise
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["reduction", "extremum"]


def _reduced_axes(ctx: RuleContext, x: TensorLayout) -> set[int]:
    dims = ctx.const("dim") if ctx.has("dim") else None
    if dims is None or (not isinstance(dims, int) and len(dims) == 0):  # amax(x, dim=()) reduces everything
        return set(range(x.ndim))
    dims = [dims] if isinstance(dims, int) else dims
    return {axis_index(int(d), x.ndim) for d in dims}


def _reduced(ctx: RuleContext, x: TensorLayout, axes: set[int], shape) -> TensorLayout:
    keep = bool(ctx.const("keepdim")) if ctx.has("keepdim") else False
    layouts = [None if a in axes else lay for a, lay in enumerate(x.layouts)]
    if not keep:
        layouts = [lay for a, lay in enumerate(layouts) if a not in axes]
    return TensorLayout(shape, layouts)


def reduction(ctx: RuleContext) -> TensorLayout:
    """sum/mean/amax/var/std/norm/logsumexp/prod/...: invariant along the reduced axes."""
    x = ctx.tensor("input")
    return _reduced(ctx, x, _reduced_axes(ctx, x), ctx.out_value)


def extremum(ctx: RuleContext):
    """max/min: three overloads. ``max(input)``: a full reduction; ``max(input, dim)``: values
    and indices (which depend on the order along ``dim``); ``max(input, other)``: elementwise."""
    if ctx.has("other"):
        return elementwise(ctx)
    x = ctx.tensor("input")
    if not ctx.has("dim"):
        return _reduced(ctx, x, set(range(x.ndim)), ctx.out_value)
    axes = _reduced_axes(ctx, x)
    for a in axes:
        ctx.fix(x[a], "the indices of a max/min depend on the unit order")
    values, indices = ctx.out_value
    return (_reduced(ctx, x, axes, values), _reduced(ctx, x, axes, indices))
