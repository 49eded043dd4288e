"""The plane through a curve's control points: an orthonormal basis in which θ_A and θ_B sit
where they should, grid points that are real networks (the grid point at θ_A is model A), and
the curve projected onto it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeconn
from modeconn.plane import PlaneReport, plane


def _curve_and_data():
    torch.manual_seed(0)
    a, b = (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2))
    curve = modeconn.Curve(a, b)
    with torch.no_grad():
        curve.bends.add_(0.3 * torch.randn_like(curve.bends))  # a bend off the segment
    x = torch.randn(64, 6)
    return curve, a, b, [(x, x[:, :3].argmax(1))]


def test_grid_points_at_the_end_points_are_the_end_points():
    curve, a, b, data = _curve_and_data()
    # margin 0.2 and grid 8 put grid lines through 0 and the far end point: x[1] = y[1] = 0, x[6] = |θ_B − θ_A|
    report = plane(curve, data, grid=8, margin=0.2)
    assert report.x[1] == pytest.approx(0.0, abs=1e-6) and report.y[1] == pytest.approx(0.0, abs=1e-6)
    assert report.x[6] == pytest.approx(report.points["B"][0], rel=1e-6)
    loss_a, acc_a = modeconn.evaluate(a, data)
    loss_b, acc_b = modeconn.evaluate(b, data)
    assert report.loss[1][1] == pytest.approx(loss_a, rel=1e-4) and report.accuracy[1][1] == acc_a
    assert report.loss[1][6] == pytest.approx(loss_b, rel=1e-4) and report.accuracy[1][6] == acc_b
    assert report.error[1][1] == pytest.approx(100 - acc_a)


def test_the_basis_is_orthonormal_and_the_curve_lies_in_the_plane():
    curve, _, _, data = _curve_and_data()
    report = plane(curve, data, grid=3, curve_points=5)
    a, bend, b = (row.detach().double() for row in (curve.ends[0], curve.bends[0], curve.ends[1]))
    assert report.points["B"] == pytest.approx((float((b - a).norm()), 0.0), abs=1e-9)
    bx, by = report.points["bend"]
    assert bx**2 + by**2 == pytest.approx(
        float((bend - a).norm() ** 2), rel=1e-9
    )  # in the plane: no distance lost
    # a quadratic Bezier curve stays in the plane of its control points: its projection keeps its length
    mid = torch.cat([w.detach().reshape(-1) for w in curve.weights(0.5).values()]).double()
    mx, my = report.curve[2]
    assert mx**2 + my**2 == pytest.approx(float((mid - a).norm() ** 2), rel=1e-9)
    assert PlaneReport.from_dict(report.to_dict()) == report


def test_a_curve_without_a_bend_off_the_line_has_no_plane():
    torch.manual_seed(0)
    a, b = (nn.Linear(3, 2) for _ in range(2))
    x = torch.randn(4, 3)
    with pytest.raises(modeconn.InvalidArgumentError, match="the bend lies on the line"):
        plane(modeconn.Curve(a, b), [(x, torch.zeros(4, dtype=torch.long))], grid=3)
    with pytest.raises(modeconn.InvalidArgumentError, match="one bend"):
        plane(modeconn.Curve(a, b, num_bends=2), [(x, torch.zeros(4, dtype=torch.long))])
