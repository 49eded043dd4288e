"""A capture is made once and reused: by alignment after discovery on the same model, and by
model B of a pair, which runs model A's graph with its own tensors. Reuse must never change a
result: the graphs compute each model's own function, and alignment finds what it finds with
a fresh capture."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from modeconn import align, discover, permute
from modeconn.capture import Capture, captures_made, model_inputs
from modeconn.symmetry.discovery import capture_graph
from modeconn.symmetry.spec import PermutationSpec


class Net(nn.Module):
    def __init__(self, slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.LeakyReLU(slope)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 5)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        h = self.act(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)) * self.scale + torch.tensor(0.5))


def _net(seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    net = Net(**kw)
    with torch.no_grad():
        net.bn.running_mean.normal_(0, 0.3)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _counted(fn):
    before = captures_made()
    out = fn()
    after = captures_made()
    made = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return out, {k: n for k, n in made.items() if n}


X = torch.randn(2, 3, 4, 4)
DATA = torch.randn(64, 3, 4, 4)


@pytest.mark.parametrize("how", ["fx", "export"])
def test_a_graph_bound_to_another_model_computes_that_models_function(how):
    a, b = _net(0), _net(1)
    captured = capture_graph(a, model_inputs(a, X), how=how)
    assert captured.fits(b, model_inputs(b, X)) is None
    graph_b = captured.graph_for(b)
    assert graph_b is not captured.graph
    with torch.no_grad():
        torch.testing.assert_close(graph_b(X), b(X), rtol=0, atol=0)
        torch.testing.assert_close(captured.graph_for(a)(X), a(X), rtol=0, atol=0)
        b.fc2.weight.mul_(2)  # the graph reads the model's tensors, not copies
        torch.testing.assert_close(graph_b(X), b(X), rtol=0, atol=0)


def test_a_capture_says_why_it_does_not_fit():
    a = _net(0)
    captured = capture_graph(a, model_inputs(a, X), how="fx")
    assert "modules or tensors differ" in captured.fits(_net(0, slope=0.2), model_inputs(a, X))
    assert "eval mode" in captured.fits(a, model_inputs(a, X), training=True)
    assert "other inputs" in captured.fits(a, model_inputs(a, X.flatten(2)))
    exported = capture_graph(a, model_inputs(a, X[:1]), how="export")
    # export specializes a batch of one: a batch of two is other inputs; fx does not see shapes
    assert "other inputs" in exported.fits(a, model_inputs(a, X))
    assert capture_graph(a, model_inputs(a, X[:1]), how="fx").fits(a, model_inputs(a, DATA)) is None
    assert capture_graph(a, model_inputs(a, X), how="export").fits(a, model_inputs(a, DATA)) is None


@pytest.mark.parametrize("how", ["fx", "export"])
def test_align_with_the_spec_of_discover_captures_nothing_again(how):
    a = _net(0)
    spec = discover(a, X, capture=how)
    assert isinstance(spec.graph, Capture) and spec.graph.how == how
    b = permute(a, spec, spec.random_permutation(3))
    result, made = _counted(lambda: align(a, b, DATA, spec=spec))
    assert sum(made.values()) == 0, made
    for k, v in a.state_dict().items():  # the planted permutation is undone exactly
        assert torch.equal(result.model.state_dict()[k], v), k


@pytest.mark.parametrize("how", ["fx", "export"])
def test_reuse_changes_no_result(how):
    a, b = _net(0), _net(1)
    spec = discover(a, X, capture=how)
    saved = PermutationSpec.from_json(spec.to_json())  # no capture: align captures A once
    assert saved.graph is None
    reused, made_reused = _counted(lambda: align(a, b, DATA, spec=spec))
    fresh, made_fresh = _counted(lambda: align(a, b, DATA, spec=saved))
    assert made_reused.get(how, 0) == 0 and made_fresh.get(how, 0) == 1  # B runs A's graph
    assert reused.perms.keys() == fresh.perms.keys()
    assert all(torch.equal(reused.perms[k], fresh.perms[k]) for k in reused.perms)
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(reused.model.state_dict()[k], v), k


def test_a_model_b_that_is_not_the_same_architecture_is_captured_on_its_own():
    a, b = _net(0), _net(1, slope=0.3)  # same tensors, another setting: another function
    spec = discover(a, X)
    _, made = _counted(lambda: align(a, b, DATA, spec=spec))
    assert made.get("fx", 0) == 1


def test_align_without_a_spec_captures_a_for_discovery_only():
    a, b = _net(0), _net(1)
    _, made = _counted(lambda: align(a, b, DATA))
    # discovery's eval and train graphs of A; the statistics pass reuses the eval one for both
    assert made == {"fx": 2}, made


def test_a_model_moved_to_another_device_or_copied_reuses_the_graph():
    a = _net(0)
    spec = discover(a, X)
    copy_a = copy.deepcopy(a)
    assert spec.graph.fits(copy_a, model_inputs(copy_a, DATA)) is None
    with torch.no_grad():
        torch.testing.assert_close(spec.graph.graph_for(copy_a)(X), a(X), rtol=0, atol=0)
