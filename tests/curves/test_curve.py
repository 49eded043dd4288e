import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import Curve
from modeconn.errors import ModeconnError
from modeconn.plugin import get_plugin


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


def _third(x, seed):
    """Another model of the pair's architecture, with its own weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = modeconn.create_model("resnet20", width=4)
    modeconn.update_bn(model, [x * (1 + seed % 5) + seed])
    return model.eval()


def _floating(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_end_state_is_each_end_points_full_state(pair):
    a, b, _ = pair
    curve = Curve(a, b, num_bends=1)
    assert not torch.equal(a.bn1.running_mean, b.bn1.running_mean)  # the ends' buffers differ
    for which, model in ((0, a), (1, b)):
        state, expected = curve.end_state(which), model.state_dict()
        assert set(state) == set(expected)  # parameters and buffers, num_batches_tracked included
        for name, value in expected.items():
            assert torch.equal(state[name], value), (which, name)
    # a copy: changing it changes neither the curve nor the model
    state = curve.end_state(1)
    state["bn1.running_mean"].add_(1.0)
    state["conv1.weight"].add_(1.0)
    assert torch.equal(curve.end_state(1)["bn1.running_mean"], b.bn1.running_mean)
    assert torch.equal(curve.end_state(1)["conv1.weight"], b.conv1.weight)


@pytest.mark.parametrize("which", [0, 1])
def test_set_end_replaces_an_end_point(pair, which):
    a, b, x = pair
    new, kept = _third(x, 3), (a, b)[1 - which]
    curve = Curve(a, b, num_bends=1).eval()
    bends = curve.bends.detach().clone()
    curve.set_end(which, new.state_dict())
    for name, value in new.state_dict().items():
        assert torch.equal(curve.end_state(which)[name], value), name
    for name, value in kept.state_dict().items():  # the other end is untouched
        assert torch.equal(curve.end_state(1 - which)[name], value), name
    assert torch.equal(curve.bends, bends)
    t = float(which)
    end = curve.model_at(t)
    for name, value in _floating(new.state_dict()).items():  # weights and running statistics
        assert torch.equal(end.state_dict()[name], value), name
    with torch.no_grad():
        assert torch.equal(end(x), new(x))
        assert torch.equal(curve(x, t), new(x))
        assert torch.equal(curve(x, 1.0 - t), kept(x))
    with pytest.raises(ModeconnError, match="new end point"):
        curve.set_end(which, modeconn.create_model("resnet20", width=8).state_dict())


def _hats(t, bends):
    """Polychain: piecewise-linear hat functions at the evenly spaced knots."""
    return [max(0.0, 1.0 - abs((bends + 1) * t - k)) for k in range(bends + 2)]


# each family's coefficients at t written out by hand, for the control points θ_A, bends…, θ_B
_COEFFICIENTS = {
    ("linear", 0): lambda t: [1 - t, t],
    ("bezier", 1): lambda t: [(1 - t) ** 2, 2 * t * (1 - t), t**2],  # the paper's eq. 7
    ("bezier", 2): lambda t: [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3],
    ("polychain", 1): lambda t: _hats(t, 1),
    ("polychain", 2): lambda t: _hats(t, 2),
}


@pytest.mark.parametrize(("family", "bends"), sorted(_COEFFICIENTS))
def test_model_at_has_the_curves_weights_and_outputs_at_t(pair, family, bends):
    """model_at(t) is a standalone eval-mode model whose parameters are Σ_j c_j(t) P_j for the
    family's coefficients and the curve's control points (bends moved off the segment, so a
    wrong t or a straight line shows), whose buffers are the ends' interpolated, and which
    computes what the curve computes at t."""
    a, b, x = pair
    points = [a.state_dict(), *(_third(x, 10 + j).state_dict() for j in range(bends)), b.state_dict()]
    curve = Curve(a, b, family=family, num_bends=bends).eval()
    with torch.no_grad():
        for j in range(bends):
            curve.bends[j].copy_(curve.flatten(points[j + 1]))
    for t in (0.0, 0.2, 0.5, 0.7, 1.0):
        coefficients = _COEFFICIENTS[family, bends](t)
        model = curve.model_at(t)
        assert isinstance(model, torch.nn.Module) and not isinstance(model, Curve)
        assert not model.training
        state = model.state_dict()
        names = [n for n, _ in model.named_parameters()]
        assert names == curve.param_names
        for name, p in model.named_parameters():
            assert p.requires_grad and p.grad is None
            if t in (0.0, 1.0):  # exactly the end point
                assert torch.equal(p, points[-1 if t else 0][name]), (t, name)
            expected = sum(c * point[name].double() for c, point in zip(coefficients, points))
            torch.testing.assert_close(p.double(), expected, rtol=1e-5, atol=1e-6, msg=f"{name} at t={t}")
        for name, value in _floating(a.state_dict()).items():
            if name not in names:  # buffers: the ends' running statistics, linearly in t
                expected = (1 - t) * value.double() + t * b.state_dict()[name].double()
                torch.testing.assert_close(state[name].double(), expected, rtol=1e-6, atol=1e-7)
        with torch.no_grad():
            torch.testing.assert_close(model(x), curve(x, t), rtol=1e-6, atol=1e-6, msg=f"t={t}")
    # standalone: changing the curve leaves the returned model as it was, and vice versa
    model = curve.model_at(0.5)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        curve.ends.add_(1.0)
        curve.bends.add_(1.0)
        for buffer in curve.end_buffers.buffers():
            buffer.add_(1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.items())
    at = curve.state_at(0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.bn1.running_mean.add_(1.0)
    assert all(torch.equal(v, curve.state_at(0.5)[k]) for k, v in at.items())


def _shares_storage(t: torch.Tensor, other: torch.Tensor) -> bool:
    return t.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()


def test_the_base_model_is_a_view_of_theta_a_after_a_conversion_too(pair):
    a, b, x = pair
    curve = Curve(a, b)
    assert all(_shares_storage(p, curve.ends) for p in curve.base.parameters())
    curve = curve.double()
    assert all(_shares_storage(p, curve.ends) and p.dtype == torch.float64 for p in curve.base.parameters())
    with torch.no_grad():
        torch.testing.assert_close(curve.eval()(x.double(), 0.0), a.double()(x.double()))


def test_a_checkpoint_whose_base_differs_from_theta_a_loads_theta_a(pair):
    """Checkpoints written when the base was a copy of A could hold another base (after
    set_end(0)): the base is loaded from θ_A, so the two cannot disagree."""
    a, b, x = pair
    state = Curve(a, b).state_dict()
    for k in state:
        if k.startswith("base.") and state[k].is_floating_point():
            state[k] = torch.full_like(state[k], 7.0)  # stale
    curve = Curve(copy.deepcopy(b), copy.deepcopy(a))
    curve.load_state_dict(state)
    for p, q in zip(curve.base.parameters(), a.parameters()):
        assert _shares_storage(p, curve.ends) and torch.equal(p, q)
    with torch.no_grad():
        torch.testing.assert_close(curve.model_at(0.0)(x), a(x))


def test_a_curve_sharing_the_models_weights_leaves_their_function(pair):
    a, b, x = pair
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    curve = Curve(a, b, share=True)
    for row, model in zip(curve.ends, (a, b)):
        assert all(_shares_storage(p, row) for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(a(x), ya, rtol=0, atol=0)
        torch.testing.assert_close(b(x), yb, rtol=0, atol=0)
        torch.testing.assert_close(curve.eval()(x, 1.0), yb, rtol=0, atol=0)
        a.conv1.weight.add_(1.0)  # shared: the curve's end point moves with the model
        torch.testing.assert_close(curve.eval()(x, 0.0), a(x))
