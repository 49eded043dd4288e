import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import Curve
from modeconn.errors import ModeconnError
from modeconn.plugin_manager import get_plugin


@pytest.fixture
def pair():
    torch.manual_seed(0)
    a = modeconn.create_model("resnet20", width=4).eval()
    b = modeconn.create_model("resnet20", width=4).eval()
    x = torch.randn(8, 3, 32, 32)
    modeconn.update_bn(a, [x])
    modeconn.update_bn(b, [x.flip(0) * 2])  # different statistics at the two ends
    return a.eval(), b.eval(), x


@pytest.mark.parametrize(("family", "bends"), [("bezier", 1), ("bezier", 3), ("polychain", 2), ("linear", 0)])
def test_end_points_are_the_models(pair, family, bends):
    a, b, x = pair
    curve = Curve(a, b, family=family, num_bends=bends).eval()
    with torch.no_grad():
        assert torch.equal(curve(x, 0.0), a(x))
        assert torch.equal(curve(x, 1.0), b(x))


@pytest.mark.parametrize(
    ("family", "bends"), [("bezier", 1), ("bezier", 3), ("polychain", 1), ("polychain", 2)]
)
def test_bends_start_on_the_segment(pair, family, bends):
    """The paper's linear initialization: at the start the curve is the straight line."""
    a, b, _ = pair
    curve = Curve(a, b, family=family, num_bends=bends)
    sa, sb = a.state_dict(), b.state_dict()
    for t in (0.2, 0.5, 0.9):
        w = curve.weights(t)
        for name in curve.param_names:
            torch.testing.assert_close(w[name], torch.lerp(sa[name], sb[name], t), atol=1e-6, rtol=1e-5)


def test_gradients_reach_only_the_bends(pair):
    a, b, x = pair
    curve = Curve(a, b).train()
    F.cross_entropy(curve(x, 0.3), torch.zeros(8, dtype=torch.long)).backward()
    trainable = [p for p in curve.parameters() if p.requires_grad]
    assert trainable == [curve.bends] and curve.bends.shape[0] == 1
    grads = curve._unflatten(curve.bends.grad[0])
    assert all(g.abs().sum() > 0 for g in grads.values())  # every tensor of the bend learns
    assert all(not t.requires_grad for t in curve.buffers())
    assert all(p.grad is None for p in curve.base.parameters())


@settings(max_examples=60, deadline=None)
@given(t=st.floats(0, 1), bends=st.integers(0, 6), family=st.sampled_from(["bezier", "polychain"]))
def test_coefficients_are_a_convex_combination(t, bends, family):
    c = get_plugin("curve", family).obj.coefficients(torch.tensor(t), bends)
    assert c.shape == (bends + 2,)
    assert (c >= 0).all()
    assert float(c.sum()) == pytest.approx(1.0, abs=1e-12)


def test_one_bend_polychain_passes_through_its_bend(pair):
    a, b, _ = pair
    curve = Curve(a, b, family="polychain", num_bends=1)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))
    w = curve.weights(0.5)
    for name, bend in curve.control_points()[1].items():
        assert torch.equal(w[name], bend)


def test_model_at_matches_the_curve_and_recomputes_bn(pair):
    a, b, x = pair
    curve = Curve(a, b).eval()
    mid = curve.model_at(0.5)
    with torch.no_grad():
        assert torch.allclose(mid(x), curve(x, 0.5), atol=1e-6)
    fresh = curve.model_at(0.5, bn_data=[x])
    assert not torch.equal(fresh.bn1.running_mean, mid.bn1.running_mean)


def test_errors(pair):
    a, b, _ = pair
    with pytest.raises(modeconn.UnknownPluginError, match=r"Available: bezier, linear, polychain"):
        Curve(a, b, family="spline")
    with pytest.raises(ModeconnError, match="exactly 0 bends"):
        Curve(a, b, family="linear", num_bends=1)
    with pytest.raises(ModeconnError, match="differs from model_a"):
        Curve(a, modeconn.create_model("resnet20", width=8))
    with pytest.raises(
        ModeconnError, match="model_a's parameters are torch.float32 and model_b's torch.float64"
    ):
        Curve(a, copy.deepcopy(b).double())
    curve = Curve(a, b)
    for t in (-0.1, 1.5):  # a curve is not extrapolated
        with pytest.raises(ModeconnError, match=f"t = {t} is off the curve"):
            curve.model_at(t)
