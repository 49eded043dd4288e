"""Ensembles along a curve: the averaged predicted probabilities of the networks at points t."""

import pytest
import torch
import torch.nn as nn

import modeconn
from modeconn.curves import Ensemble, curve_ensemble
from modeconn.errors import InvalidArgumentError


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def test_the_output_is_the_log_of_the_averaged_probabilities():
    members = [_mlp(0), _mlp(1), _mlp(2)]
    x = torch.randn(10, 5)
    probs = torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0)
    torch.testing.assert_close(Ensemble(members)(x).exp(), probs)
    weighted = 0.5 * torch.softmax(members[0](x), -1) + 0.5 * torch.softmax(members[2](x), -1)
    torch.testing.assert_close(Ensemble(members, [1, 0, 1])(x).exp(), weighted)


def test_a_curve_ensemble_holds_the_curve_networks_at_its_points():
    a, b = _mlp(0), _mlp(1)
    curve = modeconn.Curve(a, b, num_bends=1)
    x = torch.randn(6, 5)
    ends = curve_ensemble(curve, [0.0, 1.0])
    torch.testing.assert_close(ends(x).exp(), (torch.softmax(a(x), -1) + torch.softmax(b(x), -1)) / 2)
    three = curve_ensemble(curve, 3)
    middle = curve.model_at(0.5)
    torch.testing.assert_close(three.members[1](x), middle(x))
    assert not three.training


@pytest.mark.parametrize("ts, match", [([], "at least one"), ([0.5, 1.5], "t = 1.5"), (1, "at least 2")])
def test_bad_points_are_refused(ts, match):
    curve = modeconn.Curve(_mlp(0), _mlp(1), num_bends=1)
    with pytest.raises(InvalidArgumentError, match=match):
        curve_ensemble(curve, ts)


@pytest.mark.parametrize("weights", ([1.0], [-1.0, 2.0], [float("nan"), 1.0], [0.0, 0.0]))
def test_bad_weights_are_refused(weights):
    with pytest.raises(InvalidArgumentError, match="ensemble weights"):
        Ensemble([_mlp(0), _mlp(1)], weights)
