"""The curve-family plugin API: what a family registered under ``modeconn_register_curves`` is."""

from __future__ import annotations

import torch

from modeconn.plugin_manager import PluginEntry, declare_kind

__all__ = ["CurveFamily", "check_family_law", "CURVE_FAMILIES"]


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


def check_family_law(family: CurveFamily) -> str | None:
    """What is wrong with a family's coefficients, or ``None``: for the bend counts it takes,
    ``c(0)`` and ``c(1)`` must select the end points exactly (so the curve starts at θ_A and
    ends at θ_B) and the coefficients must be finite and sum to 1 at intermediate t."""
    counts = (
        [family.fixed_bends] if family.fixed_bends is not None else sorted({family.default_bends, 1, 2, 3})
    )
    for k in counts:
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            c = torch.as_tensor(
                family.coefficients(torch.tensor(t, dtype=torch.float64), k), dtype=torch.float64
            )
            if c.shape != (k + 2,):
                return f"{k} bend(s) at t={t}: {tuple(c.shape)} coefficients, expected {k + 2}"
            if not torch.isfinite(c).all():
                return f"{k} bend(s) at t={t}: coefficients are not finite ({c.tolist()})"
            if t in (0.0, 1.0):
                end = torch.zeros(k + 2, dtype=torch.float64)
                end[0 if t == 0.0 else -1] = 1.0
                if not torch.equal(c, end):
                    return f"{k} bend(s) at t={t}: {c.tolist()} does not select the end point exactly ({end.tolist()})"
            elif abs(float(c.sum()) - 1.0) > 1e-9:
                return f"{k} bend(s) at t={t}: the coefficients sum to {float(c.sum())}, not 1"
    return None


def _validate(entry: PluginEntry) -> None:
    if not isinstance(entry.obj, CurveFamily):
        raise entry.refuse("a curve family is an instance of CurveFamily (modeconn.plugin)")
    problem = entry.invoke(check_family_law, entry.obj)
    if problem:
        raise entry.refuse(f"its coefficients break the curve law: {problem}")


CURVE_FAMILIES = declare_kind("curve", "modeconn_register_curves", _validate)
"""The curve families: instances of :class:`CurveFamily` that keep the curve law."""
