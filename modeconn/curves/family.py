"""The curve-family plugin API: what a family registered under ``modeconn_register_curves`` is."""

from __future__ import annotations

import torch

__all__ = ["CurveFamily"]


class CurveFamily:
    """A family of curves through control points ``θ_A, bend_1, ..., bend_k, θ_B``.

    ``r(t) = Σ_j c_j(t) P_j``: a family only says the coefficients ``c(t)``. They must give
    ``c(0) = (1, 0, ..., 0)`` and ``c(1) = (0, ..., 0, 1)`` so that the curve starts at θ_A and
    ends at θ_B.

    Attributes:
        default_bends: the number of bends when the user does not say.
        fixed_bends: if not ``None``, the only number of bends the family accepts.
    """

    default_bends = 1
    fixed_bends: int | None = None

    def coefficients(self, t: torch.Tensor, num_bends: int) -> torch.Tensor:
        """The ``num_bends + 2`` coefficients at ``t`` (a 0-d tensor in [0, 1])."""
        raise NotImplementedError

    def bend_times(self, num_bends: int) -> list[float]:
        """Where bends start on the segment θ_A → θ_B (the paper's linear initialization):
        bend ``k`` at ``θ_A + s_k (θ_B − θ_A)``. Evenly spaced by default."""
        return [(k + 1) / (num_bends + 1) for k in range(num_bends)]
