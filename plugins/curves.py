"""Built-in curve families: ``bezier``, ``polychain`` and ``linear``."""

from __future__ import annotations

import math

import torch

from modeconn.plugin import CurveFamily, hookimpl


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
        # between knots i and i + 1 (of num_bends + 2, evenly spaced) the two hat functions are
        # 1 - f and f, with f the position within the segment: exact 0s and 1s at the knots
        s = torch.as_tensor(t, dtype=torch.float64) * (num_bends + 1)
        i = int(torch.clamp(torch.floor(s), max=num_bends))
        f = s - i
        c = torch.zeros(num_bends + 2, dtype=torch.float64)
        c[i], c[i + 1] = 1 - f, f
        return c


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
