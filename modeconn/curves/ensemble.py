"""Ensembles of the models along a curve (Garipov et al. 2018, §4): the predictions of the
networks at several points t, averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from modeconn.data.batches import call_model
from modeconn.errors import InvalidArgumentError
from modeconn.predictions import logits_of

__all__ = ["Ensemble", "curve_ensemble"]


class Ensemble(nn.Module):
    """Models whose predicted class probabilities are averaged: the output is the log of that
    average (so ``softmax`` of it is the ensemble's prediction and cross-entropy on it is the
    ensemble's loss). Each member's output may be logits, a tuple with the logits first, or a
    Hugging Face ``ModelOutput``."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise InvalidArgumentError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        n = len(members)
        w = torch.full((n,), 1.0 / n) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InvalidArgumentError(
                f"ensemble weights must be {n} finite numbers >= 0, not all 0; got {weights!r}"
            )
        self.register_buffer("weights", (w / w.sum()).float(), persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = kwargs if kwargs else args if len(args) != 1 else args[0]
        logps = [torch.log_softmax(logits_of(call_model(m, x)).float(), -1) for m in self.members]
        stacked = torch.stack(logps) + self.weights.log().view(-1, *[1] * logps[0].ndim)
        return torch.logsumexp(stacked, 0)


def curve_ensemble(curve: Any, ts: Sequence[float] | int, *, bn_data: Any = None) -> Ensemble:
    """An :class:`Ensemble` of the networks of ``curve`` at ``ts`` (or at ``ts`` evenly spaced
    points of [0, 1], ends included), each a standalone model (:meth:`Curve.model_at`, with
    its BatchNorm statistics recomputed on ``bn_data`` when given — a BatchNorm curve needs
    it away from the end points). The end points' ensemble, Garipov's baseline, is
    ``curve_ensemble(curve, [0, 1])``."""
    if isinstance(ts, int):
        if ts < 2:
            raise InvalidArgumentError(f"ts={ts}: give at least 2 evenly spaced points, or a list of t")
        ts = [i / (ts - 1) for i in range(ts)]
    ts = [float(t) for t in ts]
    if not ts:
        raise InvalidArgumentError("an ensemble needs at least one point t")
    bad = [t for t in ts if not 0.0 <= t <= 1.0]
    if bad:
        raise InvalidArgumentError(f"points of a curve lie in [0, 1]; got t = {bad[0]}")
    return Ensemble([curve.model_at(t, bn_data=bn_data) for t in ts]).eval()
