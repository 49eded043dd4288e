"""Built-in curve families: ``bezier``, ``polychain`` and ``linear``."""

from __future__ import annotations

import math

import torch

from modeconn import hookimpl
from modeconn.curves.family import CurveFamily


class Bezier(CurveFamily):
    """Bézier curve of degree ``num_bends + 1`` (Garipov et al. 2018); one bend is the paper's
    quadratic curve, eq. 7: ``r(t) = (1−t)² θ_A + 2t(1−t) θ_c + t² θ_B``."""

    def coefficients(self, t: torch.Tensor, num_bends: int) -> torch.Tensor:
        n = num_bends + 1
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.stack([math.comb(n, i) * t**i * (1 - t) ** (n - i) for i in range(n + 1)])


class PolyChain(CurveFamily):
    """Piecewise linear through the bends, which sit at evenly spaced ``t`` (Garipov et al. 2018)."""

    def coefficients(self, t: torch.Tensor, num_bends: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        knots = torch.linspace(0, 1, num_bends + 2, dtype=torch.float64)
        # hat functions: 1 at their own knot, falling linearly to 0 at the neighbouring knots
        width = 1.0 / (num_bends + 1)
        return torch.clamp(1 - (t - knots).abs() / width, min=0)


class Linear(CurveFamily):
    """The straight line, ``(1 − t) θ_A + t θ_B``: no bends; a baseline."""

    default_bends = 0
    fixed_bends = 0

    def coefficients(self, t: torch.Tensor, num_bends: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.stack([1 - t, t])


@hookimpl
def modeconn_register_curves(registry) -> None:
    registry.add("bezier", Bezier())
    registry.add("polychain", PolyChain())
    registry.add("linear", Linear())
