"""Evaluating models and paths between them: loss/accuracy, BatchNorm recomputation, and the
loss along the straight line between two models."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn.data.batches import batches, call_model
from modeconn.modules import device_of, float_dtype_of, modes_restored, unwrap

__all__ = [
    "evaluate",
    "update_bn",
    "interpolate",
    "evenly_spaced",
    "evaluate_path",
    "lerp_state",
    "architecture_difference",
    "CurveReport",
]


@torch.no_grad()
def evaluate(model: nn.Module, data: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` in eval mode over ``data``: a
    DataLoader or iterable of labelled batches (``(x, y)``, ``(x1, x2, y)``, dicts with a
    ``"labels"`` entry), a Dataset, or an ``(x, y)`` pair of tensors. The model's mode is restored."""
    model = unwrap(model)
    device, dtype = device_of(model), float_dtype_of(model)
    total, loss_sum, correct = 0, 0.0, 0
    with modes_restored(model):
        model.eval()
        for batch in batches(data):
            if batch.target is None:
                raise ValueError(
                    "evaluate needs labelled batches: (inputs..., labels) or dicts with 'labels'"
                )
            batch = batch.to(device, dtype)
            x, y = batch.x, batch.target
            logits = call_model(model, x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    if total == 0:
        raise ValueError("evaluate got no data")
    return loss_sum / total, 100.0 * correct / total


@torch.no_grad()
def update_bn(model: nn.Module, data: Any, num_samples: int | None = None) -> nn.Module:
    """Recompute BatchNorm running statistics on ``data`` as an exact average over its batches
    (Garipov et al.'s ``update_bn``; momentum ``None``), in place. Models without BatchNorm
    are returned unchanged."""
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return model
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over batches
    device, dtype = device_of(model), float_dtype_of(model)
    try:
        with modes_restored(model):
            model.train()
            for m in model.modules():  # BN statistics only; dropout stays off
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()
            for batch in batches(data, num_samples=num_samples):
                call_model(model, batch.to(device, dtype).x)
    finally:
        for m in bns:
            m.momentum = momenta[m]
    return model


def architecture_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    """Where two state dicts stop being of one architecture (``None`` if they are):
    "`name`: shape (...) vs (...)" or "entry `x` vs `y`"."""
    for (ka, va), (kb, vb) in itertools.zip_longest(a.items(), b.items(), fillvalue=(None, None)):
        if ka == kb and va is not None and vb is not None:
            if va.shape != vb.shape:
                return f"`{ka}`: shape {tuple(va.shape)} vs {tuple(vb.shape)}"
        else:
            return f"entry `{ka}` vs `{kb}`"
    return None


def lerp_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """``(1 - t) a + t b`` for floating-point entries; integer entries (step counters) from ``a``."""
    return {k: torch.lerp(v, b[k], t) if v.is_floating_point() else v.clone() for k, v in a.items()}


@dataclass
class CurveReport:
    """Loss and accuracy at points ``t`` of a path between two models (a line or a curve).

    ``barrier`` is the largest excess of the loss over the straight line between the end points'
    losses, ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``; ``average_accuracy`` and
    ``min_accuracy`` are the two numbers of the paper's Table 1.
    """

    t: list[float]
    loss: list[float]
    accuracy: list[float]
    label: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def average_accuracy(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)

    @property
    def min_accuracy(self) -> float:
        return min(self.accuracy)

    @property
    def barrier(self) -> float:
        l0, l1 = self.loss[0], self.loss[-1]
        t0, t1 = self.t[0], self.t[-1]
        return max(
            loss - (l0 + (l1 - l0) * (t - t0) / ((t1 - t0) or 1.0)) for t, loss in zip(self.t, self.loss)
        )

    def __str__(self) -> str:
        head = f"{self.label or 'path'}: average accuracy {self.average_accuracy:.2f}%, minimum {self.min_accuracy:.2f}%, loss barrier {self.barrier:.4f}"
        rows = [head, "       t      loss  accuracy"]
        rows += [
            f"  {t:6.3f}  {loss:8.4f}  {acc:7.2f}%" for t, loss, acc in zip(self.t, self.loss, self.accuracy)
        ]
        return "\n".join(rows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(average_accuracy=self.average_accuracy, min_accuracy=self.min_accuracy, barrier=self.barrier)
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.csv`` (one row per t) or ``.json`` (everything), by the file's suffix."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
        elif path.endswith(".csv"):
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["t", "loss", "accuracy"])
                w.writerows(zip(self.t, self.loss, self.accuracy))
        else:
            raise ValueError(f"save to a .csv or .json file, not {path!r}")

    @staticmethod
    def plot(reports: Sequence[CurveReport], path: str | os.PathLike | None = None):
        """Accuracy and loss against t for several paths on one figure (the paper's Fig. 3,
        right); saved to ``path`` when given. Returns the matplotlib figure."""
        from modeconn.plotting import finish, pyplot

        fig, (ax_acc, ax_loss) = pyplot().subplots(1, 2, figsize=(10, 3.8))
        for r in reports:
            ax_acc.plot(r.t, r.accuracy, marker="o", ms=3, label=r.label or None)
            ax_loss.plot(r.t, r.loss, marker="o", ms=3, label=r.label or None)
        ax_acc.set(xlabel="t", ylabel="accuracy (%)", title="accuracy along the path")
        ax_loss.set(xlabel="t", ylabel="loss", title="loss along the path")
        for ax in (ax_acc, ax_loss):
            ax.grid(alpha=0.3)
            if any(r.label for r in reports):
                ax.legend()
        return finish(fig, path)


def evenly_spaced(num_points: int) -> list[float]:
    """``num_points`` evenly spaced t in [0, 1], both ends included (``[0.0]`` for one point)."""
    return [i / (num_points - 1) for i in range(num_points)] if num_points > 1 else [0.0]


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    ts: Sequence[float] | int,
    data: Any,
    bn_data: Any = None,
    *,
    label: str = "",
) -> CurveReport:
    """Loss and accuracy of ``(1 - t) θ_A + t θ_B`` at each ``t`` (or at ``ts`` evenly spaced points
    in [0, 1]), with BatchNorm statistics recomputed on ``bn_data`` at each t when given
    (otherwise the running statistics are interpolated too). The models are left unchanged."""
    if isinstance(ts, int):
        ts = evenly_spaced(ts)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if (where := architecture_difference(sa, sb)) is not None:
        raise ValueError(
            f"model_b differs from model_a at {where}; interpolate needs two models of one architecture"
        )
    return evaluate_path(
        model_a, ((float(t), lerp_state(sa, sb, float(t))) for t in ts), data, bn_data, label=label
    )


def evaluate_path(
    template: nn.Module,
    states: Iterable[tuple[float, dict[str, torch.Tensor]]],
    data: Any,
    bn_data: Any = None,
    *,
    label: str = "",
    meta: dict | None = None,
) -> CurveReport:
    """Loss and accuracy of a copy of ``template`` loaded with each ``(t, state_dict)`` in turn,
    BatchNorm statistics recomputed on ``bn_data`` first when given. ``template`` is unchanged."""
    probe = copy.deepcopy(template)
    ts, losses, accs = [], [], []
    for t, state in states:
        probe.load_state_dict(state)
        if bn_data is not None:
            update_bn(probe, bn_data)
        loss, acc = evaluate(probe, data)
        ts.append(t)
        losses.append(loss if math.isfinite(loss) else float("inf"))
        accs.append(acc)
    return CurveReport(ts, losses, accs, label=label, meta=meta or {})
