"""The plane through a curve's three control points: loss and accuracy over a grid on it
(Garipov et al. 2018, Fig. 1; Tatro et al. 2020, Fig. 3 top left).

The plane holds θ_A, the bend and θ_B of a one-bend curve. Its basis is orthonormal
(Gram–Schmidt): u along θ_B − θ_A, v along the part of bend − θ_A orthogonal to u, so that
θ_A = (0, 0), θ_B = (|θ_B − θ_A|, 0), and distances on the figure are distances in weight
space. Every grid point is a network whose BatchNorm statistics are recomputed (when
``bn_data`` is given) before it is measured; the curve r(t) is projected onto the plane.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from modeconn.errors import InvalidArgumentError
from modeconn.metrics import Classification, Metric
from modeconn.path_report import evaluate_path

__all__ = ["PlaneReport", "plane"]


@dataclass
class PlaneReport:
    """Loss and accuracy on a grid of the plane: ``loss[j][i]`` and ``accuracy[j][i]`` at
    ``(x[i], y[j])``; ``points`` are the control points' coordinates (``"A"``, ``"bend"``,
    ``"B"``) and ``curve`` the curve's, at evenly spaced t."""

    x: list[float]
    y: list[float]
    loss: list[list[float]]
    accuracy: list[list[float]]
    points: dict[str, tuple[float, float]]
    curve: list[tuple[float, float]]
    label: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def error(self) -> list[list[float]]:
        """Error in % (100 − accuracy) on the grid."""
        return [[100.0 - a for a in row] for row in self.accuracy]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PlaneReport:
        points = {k: tuple(v) for k, v in d["points"].items()}
        return cls(
            d["x"],
            d["y"],
            d["loss"],
            d["accuracy"],
            points,
            [tuple(p) for p in d["curve"]],
            d.get("label", ""),
            d.get("meta", {}),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write everything as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


def _basis(a: torch.Tensor, bend: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = b - a
    if float(u.norm()) == 0.0:
        raise InvalidArgumentError("the curve's end points are the same point: no plane to span")
    u = u / u.norm()
    v = bend - a
    v = v - (v @ u) * u
    if float(v.norm()) <= 1e-5 * float((bend - a).norm()):  # float32 round-off of a bend on the segment
        raise InvalidArgumentError("the bend lies on the line through the end points: fit the curve first")
    return u, v / v.norm()


def plane(
    curve: Any,
    data: Any,
    bn_data: Any = None,
    *,
    grid: int = 11,
    margin: float = 0.2,
    curve_points: int = 41,
    label: str = "",
    metrics: Sequence[Metric] = (Classification(),),
    progress: bool = False,
) -> PlaneReport:
    """Loss and accuracy of ``curve.base`` at ``grid × grid`` points of the plane through the
    control points of ``curve`` (a one-bend :class:`~modeconn.Curve`), ``margin`` beyond their
    extent on each side, measured on ``data`` with BatchNorm statistics recomputed on
    ``bn_data`` at each point (when given; see :func:`modeconn.update_bn`)."""
    if curve.num_bends != 1:
        raise InvalidArgumentError(f"the plane needs a curve with one bend, got {curve.num_bends}")
    if grid < 2:
        raise InvalidArgumentError(f"grid must be >= 2, got {grid}")
    with torch.no_grad():
        a, bend, b = (row.detach().double() for row in (curve.ends[0], curve.bends[0], curve.ends[1]))
        u, v = _basis(a, bend, b)

        def coords(row: torch.Tensor) -> tuple[float, float]:
            d = row.double() - a
            return float(d @ u), float(d @ v)

        points = {"A": (0.0, 0.0), "bend": coords(bend), "B": coords(b)}
        ts = torch.linspace(0, 1, curve_points).tolist()
        path = [coords(torch.cat([w.reshape(-1) for w in curve.weights(t).values()])) for t in ts]
        xs_all, ys_all = [p[0] for p in points.values()], [p[1] for p in points.values()]
        width, height = max(xs_all) - min(xs_all), max(ys_all) - min(ys_all)
        x = torch.linspace(min(xs_all) - margin * width, max(xs_all) + margin * width, grid).tolist()
        y = torch.linspace(min(ys_all) - margin * height, max(ys_all) + margin * height, grid).tolist()
        dtype = curve.ends.dtype

        def states():
            for j, yj in enumerate(y):
                for i, xi in enumerate(x):
                    row = (a + xi * u + yj * v).to(dtype)
                    yield float(j * grid + i), curve.state_of(row)

    report = evaluate_path(
        curve.base,
        states(),
        data,
        bn_data,
        label=label or "plane",
        metrics=metrics,
        progress=progress,
        total=grid * grid,
    )
    loss = [report.loss[j * grid : (j + 1) * grid] for j in range(grid)]
    accuracy = [report.accuracy[j * grid : (j + 1) * grid] for j in range(grid)]
    return PlaneReport(
        x, y, loss, accuracy, points, path, label, {"bn_data": report.meta["bn_data"], "grid": grid}
    )
