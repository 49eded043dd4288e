"""Built-in curve optimizer ``pgd``: fit a curve that is robust along its length.

Each batch is replaced by PGD examples against the network at r(t), at the same t that the
loss then uses (as the paper's code does, §5), and the bends step on the adversarial loss. The
curve is in train mode while it is attacked, so BatchNorm normalizes by the attacked batch.
"""

from __future__ import annotations

from typing import Any

import torch

import modeconn
from modeconn.attacks import PGD
from modeconn.plugin import CurveOptimizer, hookimpl

__all__ = ["PGDCurve"]


class PGDCurve(CurveOptimizer):
    """The ``pgd`` optimizer: ``fit_curve(curve, data, optimizer="pgd", epochs=..., attack=...)``.

    ``attack`` is a :class:`modeconn.attacks.PGD` or a preset's name (default ``"train"``: the
    paper's L∞ PGD with ε = 8/255, 5 steps of α = 2/255, random start). Inputs must be in
    [0, 1] with normalization inside the model (see :mod:`modeconn.attacks`).
    """

    def __init__(
        self,
        curve: modeconn.Curve,
        settings: modeconn.Settings | None = None,
        *,
        attack: PGD | str = "train",
        **kwargs: Any,
    ):
        if isinstance(attack, str):
            attack = PGD.preset(attack)
        super().__init__(curve, settings, adversary=attack, **kwargs)

    def perturb(self, x: Any, y: torch.Tensor, t: float) -> Any:
        return self.adversary(self.curve.function_at(t), x, y)


@hookimpl
def modeconn_register_optimizers(registry) -> None:
    registry.add("pgd", PGDCurve)
