"""Sites derived from others (an eval-mode BatchNorm's output from its input's statistics) have
the statistics observing them gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import modeconn
from modeconn import discover
from modeconn.alignment import derived as derived_module
from modeconn.alignment import stats as stats_module
from modeconn.alignment.stats import choose_sites, collect_statistics
from modeconn.capture import model_inputs
from modeconn.symmetry.discovery import trace_model


class ReluNorm(nn.BatchNorm2d):
    """A BatchNorm with an activation of its own: not affine, so never derived."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class Net(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), norm(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 3, padding=1), norm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return self.head(torch.relu(self.bn2(self.conv2(h))).mean((2, 3)))


def _pair(norm=nn.BatchNorm2d):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = Net(norm)
        for bn in (m.bn1, m.bn2):
            bn.weight.data.normal_()  # some scales negative
            bn.bias.data.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.3, 3)
        models.append(m.eval())
    return models


def _derived(a, b, x, spec, kind):
    graphs = [trace_model(m, model_inputs(m, x[:2])) for m in (a, b)]
    plan = {g.name: choose_sites(g, kind) for g in spec.permutable}
    return derived_module.derived_sites(*graphs, spec.permutable, plan)


@pytest.mark.parametrize("kind", ["pre", "post"])
def test_derived_statistics_equal_observed_ones(kind, monkeypatch):
    a, b = _pair()
    x = torch.randn(32, 3, 8, 8, dtype=torch.float64)
    a, b = a.double(), b.double()
    spec = discover(a, x[:2])
    derived = _derived(a, b, x, spec, kind)
    assert len(derived) == (2 if kind == "pre" else 0)  # bn1 from conv1, bn2 from conv2
    with_derived = collect_statistics(a, b, x, spec, kind=kind, labels=False)
    monkeypatch.setattr(stats_module, "derived_sites", lambda *args: {})
    observed = collect_statistics(a, b, x, spec, kind=kind, labels=False)
    assert with_derived.keys() == observed.keys()
    for name in observed:
        for got, want in zip(with_derived[name], observed[name], strict=True):
            assert got.n == want.n and got.kind == want.kind
            for field in ("mean_a", "mean_b", "var_a", "var_b", "cov"):
                torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-9, atol=1e-9)
            # the norm's rounding floor is its input's, scaled: a shift does not make a unit vary
            parent = observed[name][0]
            if got is not with_derived[name][0] and kind == "pre":
                scale = got.var_a / parent.var_a
                torch.testing.assert_close(got.floor_a, scale * parent.floor_a, rtol=1e-9, atol=0)


def test_a_norm_with_its_own_forward_or_in_train_mode_is_observed():
    x = torch.randn(8, 3, 8, 8)
    a, b = _pair(ReluNorm)
    assert _derived(a, b, x, discover(a, x[:2]), "pre") == {}
    a, b = _pair()
    spec = discover(a, x[:2])
    b.bn1.train()
    derived = _derived(a, b, x, spec, "pre")
    assert [(spec[name].size, i) for name, i in derived] == [(5, 1)]  # bn2, after conv2


def test_alignment_with_derived_sites_recovers_a_planted_permutation():
    a, _ = _pair()
    x = torch.randn(64, 3, 8, 8)
    spec = discover(a, x[:2])
    b = modeconn.permute(a, spec, spec.random_permutation(5))
    r = modeconn.align(a, b, x, cost="l2_preact", spec=spec)
    assert all(torch.equal(v, r.model.state_dict()[k]) for k, v in a.state_dict().items())
