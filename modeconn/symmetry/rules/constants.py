"""Rules for tensors made from nothing but shapes: ``zeros_like``, ``x.new_zeros(...)``,
``torch.zeros(...)``. A tensor of equal elements is *uniform*: no permutation changes it, so
it couples nothing it meets (an RNN's zero initial state, a zero residual)."""

from __future__ import annotations

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["uniform_like", "constant_like", "noop"]


def uniform_like(ctx: RuleContext) -> TensorLayout:
    """zeros_like/ones_like/full_like, new_zeros/new_ones/new_full, torch.zeros/ones/full:
    all elements equal, whatever the input's values."""
    return ctx.out([None] * len(ctx.out_value), uniform=True)


def constant_like(ctx: RuleContext) -> TensorLayout:
    """empty_like/new_empty/torch.empty: values that depend on nothing the model computes
    (uninitialized memory), but not known to be equal: nothing is permuted along them."""
    return ctx.out([None] * len(ctx.out_value))


def noop(ctx: RuleContext) -> None:
    """``torch._assert``: checks a condition, computes nothing."""
    return None
