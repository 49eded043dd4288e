"""Rules for torchvision's and timm's own layers and fx-wrapped functions, each with the
reason it is sound."""

from __future__ import annotations

import torch.nn as nn

from modeconn.symmetry.context import RuleContext, Unsupported
from modeconn.symmetry.rules.layers import batch_norm, conv
from modeconn.symmetry.spaces import TensorLayout

__all__ = ["stochastic_depth", "std_conv", "batch_norm_act"]


def stochastic_depth(ctx: RuleContext) -> TensorLayout:
    """torchvision's stochastic depth: each sample (or the whole batch) is scaled by one random
    number, the same for every channel, so channels pass through."""
    x = ctx.tensor("input")
    return ctx.out(x.layouts)


def std_conv(ctx: RuleContext) -> TensorLayout:
    """timm's weight-standardized convolutions: standardization is over each output channel's
    own weights (invariant to permuting input channels), and ``gain`` scales output channels."""
    out = conv(ctx)
    ctx.bind_local("gain", 0, out[1 if out.ndim == ctx.module.weight.ndim else 0])
    return out


def batch_norm_act(ctx: RuleContext) -> TensorLayout:
    """timm's BatchNormAct2d: BatchNorm, then dropout and an elementwise activation (with no
    parameters of its own), so it is BatchNorm's rule. Its output is after the activation: a
    ``"post"`` site only, unless the activation is the identity (a linear bottleneck), whose
    output is a norm's output too (``"pre"`` as well)."""
    extra = [n for n, _ in ctx.module.named_parameters() if n not in ("weight", "bias")]
    if extra:
        raise Unsupported(f"BatchNormAct2d whose activation has parameters ({', '.join(extra)})")
    out = batch_norm(ctx, site="post")
    if isinstance(getattr(ctx.module, "act", None), nn.Identity):
        ctx.site("pre", out)
    return out
