"""Paths between two models — straight lines and curves — evaluated at points ``t``, and the
report of what was measured along them (``PathReport``)."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from modeconn.batchnorm import update_bn
from modeconn.errors import InvalidArgumentError
from modeconn.merging.correction import ReferenceStatistics
from modeconn.merging.correction import repair as repair_model
from modeconn.metrics import Classification, Metric, measure
from modeconn.modules import unwrap
from modeconn.state import check_same_architecture, lerp_state

__all__ = ["PathReport", "evaluate_path", "evaluate_line", "evenly_spaced"]


@dataclass
class PathReport:
    """Loss and accuracy at points ``t`` of a path between two models (a line or a curve),
    and any other metric measured there (``extra``: ``{"robust_accuracy": [...]}``).

    ``barrier`` is the largest excess of the loss over the straight line between the end points'
    losses, ``max_t [L(t) - ((1 - t) L(0) + t L(1))]``; ``average_accuracy`` and
    ``min_accuracy`` are the two numbers of the paper's Table 1.
    """

    t: list[float]
    loss: list[float]
    accuracy: list[float]
    label: str = ""
    meta: dict = field(default_factory=dict)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        """The values of one metric along the path (``"loss"``, ``"accuracy"`` or an extra one)."""
        if key in ("loss", "accuracy"):
            return getattr(self, key)
        return self.extra[key]

    def best(self, metric: str = "accuracy") -> tuple[float, float]:
        """``(t, value)`` of the best evaluated point for ``metric``: the lowest for a loss (a
        metric whose name contains ``"loss"``), the highest otherwise; the first such point
        on ties, and NaN values never win."""
        values = self.values(metric) if metric in ("loss", "accuracy") or metric in self.extra else None
        if values is None:
            known = ", ".join(["loss", "accuracy", *self.extra])
            raise InvalidArgumentError(f"no metric {metric!r} in this report; it has {known}")
        lower = "loss" in metric
        scored = [(v if lower else -v, i) for i, v in enumerate(values) if not math.isnan(v)]
        if not scored:
            raise InvalidArgumentError(f"every value of {metric!r} on this path is NaN")
        i = min(scored)[1]
        return self.t[i], values[i]

    @property
    def average_accuracy(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)

    @property
    def min_accuracy(self) -> float:
        return min(self.accuracy)

    @property
    def barrier(self) -> float:
        return barrier(self.t, self.loss)

    def __str__(self) -> str:
        head = (
            f"{self.label or 'path'}: average accuracy {self.average_accuracy:.2f}%, "
            f"minimum {self.min_accuracy:.2f}%, loss barrier {self.barrier:.4f}"
        )
        keys = list(self.extra)
        rows = [head, "       t      loss  accuracy" + "".join(f"  {k:>16}" for k in keys)]
        for i, (t, loss, acc) in enumerate(zip(self.t, self.loss, self.accuracy)):
            more = "".join(f"  {self.extra[k][i]:16.4f}" for k in keys)
            rows.append(f"  {t:6.3f}  {loss:8.4f}  {acc:7.2f}%{more}")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(average_accuracy=self.average_accuracy, min_accuracy=self.min_accuracy, barrier=self.barrier)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PathReport:
        return cls(
            d["t"], d["loss"], d["accuracy"], d.get("label", ""), d.get("meta", {}), d.get("extra", {})
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.csv`` (one row per t) or ``.json`` (everything), by the file's suffix."""
        path = os.fspath(path)
        if path.endswith(".json"):
            with open(path, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
        elif path.endswith(".csv"):
            keys = list(self.extra)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["t", "loss", "accuracy", *keys])
                w.writerows(zip(self.t, self.loss, self.accuracy, *(self.extra[k] for k in keys)))
        else:
            raise InvalidArgumentError(f"save to a .csv or .json file, not {path!r}")

    @classmethod
    def join(cls, pieces: Sequence[PathReport], label: str = "") -> PathReport:
        """One path made of consecutive ``pieces`` — a polychain's segments, or the halves of a
        path through a point re-aligned to each end (A → Q_A·M, then Q_B·M → B: one function
        at the joint, two permutations of it). Piece k of n is placed on [k/n, (k+1)/n]; where
        a piece starts at the point the one before ended on, that point is kept once. Metrics
        in ``extra`` are kept where every piece has them. The barrier is then measured against
        the line between the whole path's end points, not each piece's."""
        if not pieces:
            raise InvalidArgumentError("join needs at least one piece")
        n = len(pieces)
        keys = [k for k in pieces[0].extra if all(k in p.extra for p in pieces)]
        t: list[float] = []
        loss: list[float] = []
        acc: list[float] = []
        extra: dict[str, list[float]] = {k: [] for k in keys}
        for k, piece in enumerate(pieces):
            t0, t1 = piece.t[0], piece.t[-1]
            placed = [(k + (x - t0) / ((t1 - t0) or 1.0)) / n for x in piece.t]
            skip = 1 if t and math.isclose(placed[0], t[-1]) else 0
            t += placed[skip:]
            loss += piece.loss[skip:]
            acc += piece.accuracy[skip:]
            for key in keys:
                extra[key] += piece.extra[key][skip:]
        return cls(t, loss, acc, label, {"pieces": [p.label for p in pieces]}, extra)

    @staticmethod
    def plot(
        reports: Sequence[PathReport], path: str | os.PathLike | None = None, *, title: str | None = None
    ):
        """Accuracy and loss against t for several paths on one figure (the paper's Fig. 3,
        right; see :func:`modeconn.plotting.plot_paths`); saved to ``path`` when given.
        Returns the matplotlib figure."""
        from modeconn.plotting import plot_paths

        return plot_paths(reports, path, title=title)


def barrier(t: Sequence[float], loss: Sequence[float]) -> float:
    """``max_t [L(t) - ((1 - t) L(0) + t L(1))]`` over the given points."""
    l0, l1 = loss[0], loss[-1]
    t0, t1 = t[0], t[-1]
    return max(x - (l0 + (l1 - l0) * (ti - t0) / ((t1 - t0) or 1.0)) for ti, x in zip(t, loss))


def evenly_spaced(num_points: int) -> list[float]:
    """``num_points`` evenly spaced t in [0, 1], both ends included (``[0.0]`` for one point)."""
    return [i / (num_points - 1) for i in range(num_points)] if num_points > 1 else [0.0]


def evaluate_line(
    model_a: nn.Module,
    model_b: nn.Module,
    ts: Sequence[float] | int,
    data: Any,
    bn_data: Any = None,
    *,
    label: str = "",
    metrics: Sequence[Metric] = (Classification(),),
    bn_adversary: Any = None,
    progress: bool = False,
    repair: bool = False,
    repair_data: Any = None,
) -> PathReport:
    """Loss and accuracy of ``(1 - t) θ_A + t θ_B`` at each ``t`` (or at ``ts`` evenly spaced points
    in [0, 1]), and any other ``metrics``, with BatchNorm statistics recomputed on ``bn_data``
    (adversarial examples of it with ``bn_adversary``; see :func:`modeconn.update_bn`) at each t
    when given (otherwise the running statistics are interpolated too). The models are left
    unchanged.

    ``repair=True`` evaluates the REPAIRed line (Jordan et al. 2023, Fig. 1): at each t, after
    any BatchNorm recomputation, the model's unit statistics are reset to ``(1 - t)`` A's plus
    ``t`` B's, measured once on ``repair_data`` (default ``bn_data``; see :func:`modeconn.repair`)."""
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    if isinstance(ts, int):
        ts = evenly_spaced(ts)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    check_same_architecture(sa, sb)
    states = ((float(t), lerp_state(sa, sb, float(t))) for t in ts)
    if repair:
        repair_data = repair_data if repair_data is not None else bn_data
        if repair_data is None:
            raise InvalidArgumentError(
                "evaluate_line(repair=True) needs data to measure statistics on: pass repair_data= (or bn_data=)"
            )
        stats = ReferenceStatistics.measure([model_a, model_b], repair_data)
        states = (
            (t, state, lambda m, t=t: repair_model(m, stats, repair_data, weights=[1 - t, t]))
            for t, state in states
        )
    return evaluate_path(
        model_a,
        states,
        data,
        bn_data,
        label=label,
        meta={"repair": "REPAIR"} if repair else None,
        metrics=metrics,
        bn_adversary=bn_adversary,
        progress=progress,
        total=len(ts),
    )


def evaluate_path(
    template: nn.Module,
    states: Iterable[tuple[float, dict[str, torch.Tensor]]],
    data: Any,
    bn_data: Any = None,
    *,
    label: str = "",
    meta: dict | None = None,
    metrics: Sequence[Metric] = (Classification(),),
    bn_adversary: Any = None,
    progress: bool = False,
    total: int | None = None,
) -> PathReport:
    """The metrics of a copy of ``template`` loaded with each ``(t, state_dict)`` (or ``(t,
    state_dict, step)``, ``step(model)`` applied after the BatchNorm recomputation) in turn,
    BatchNorm statistics recomputed on ``bn_data`` (attacked by ``bn_adversary`` when given)
    first when given; ``meta["bn_data"]`` records which (``"none"``, ``"clean"`` or
    ``"adversarial (<attack>)"``). ``metrics`` must include ``loss`` and ``accuracy``
    (:class:`~modeconn.metrics.Classification`). ``progress`` shows a bar over the points
    (``total`` of them, when known). ``template`` is unchanged."""
    if not any({"loss", "accuracy"} <= set(m.keys) for m in metrics):
        raise InvalidArgumentError(
            "path metrics must include loss and accuracy: put modeconn.metrics.Classification() among them"
        )
    meta = {**(meta or {}), "bn_data": _bn_data(bn_data, bn_adversary)}
    probe = copy.deepcopy(template)
    ts: list[float] = []
    values: dict[str, list[float]] = {}
    from tqdm.auto import tqdm

    bar = tqdm(states, total=total, desc=label or "path", unit="point", leave=False, disable=not progress)
    for t, state, *then in bar:
        probe.load_state_dict(state)
        if bn_data is not None:
            update_bn(probe, bn_data, adversary=bn_adversary)
        for step in then:  # e.g. REPAIR, after the BatchNorm statistics
            step(probe)
        for k, v in measure(probe, data, metrics).items():
            values.setdefault(k, []).append(v if math.isfinite(v) or "loss" not in k else float("inf"))
        ts.append(t)
    loss, acc = values.pop("loss"), values.pop("accuracy")
    return PathReport(ts, loss, acc, label=label, meta=meta, extra=values)


def _bn_data(bn_data: Any, adversary: Any) -> str:
    if bn_data is None:
        return "none"
    if adversary is None:
        return "clean"
    label = adversary.describe() if hasattr(adversary, "describe") else repr(adversary)
    return f"adversarial ({label})"
