"""The contract kit (modeconn.testing) passes every plugin modeconn registers, and fails
plugins that break the contract, each for its own reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modeconn import testing
from modeconn.attacks import PGD
from modeconn.plugin import (
    ActivationCost,
    CurveFamily,
    CurveOptimizer,
    PairStats,
    WeightCost,
    get_registry,
    passthrough,
)


@pytest.mark.parametrize("name", ["correlation", "l2_preact", "weight_matching"])
def test_every_builtin_cost_keeps_the_contract(name):
    assert name in get_registry("cost")
    testing.check_cost(name)


@pytest.mark.parametrize("name", ["bezier", "polychain", "linear"])
def test_every_builtin_curve_family_keeps_the_contract(name):
    testing.check_curve_family(name)


def test_every_registered_kind_is_covered_here():
    assert sorted(e.name for e in get_registry("cost")) == ["correlation", "l2_preact", "weight_matching"]
    assert sorted(e.name for e in get_registry("curve")) == ["bezier", "linear", "polychain"]
    assert sorted(e.name for e in get_registry("optimizer")) == ["pam", "pgd", "sgd"]


@pytest.mark.parametrize(
    "name, options",
    [
        ("sgd", {}),
        ("pam", {"perm_epochs": 1, "score_batches": 1, "candidates": 2}),
        ("pgd", {"attack": PGD(eps=0.05, alpha=0.02, steps=2)}),
    ],
)
def test_every_builtin_optimizer_keeps_the_contract(name, options):
    testing.check_optimizer(name, **options)


class Transposed(ActivationCost):
    """A cost whose matrix has the wrong shape."""

    def matrix(self, stats: PairStats) -> torch.Tensor:
        return stats.correlation()[:, :1]


class Anti(ActivationCost):
    """A well-formed cost that matches the least correlated units."""

    maximize = False

    def matrix(self, stats: PairStats) -> torch.Tensor:
        return -stats.correlation() * -1.0  # minimizing correlation: recovers nothing


class Identity(WeightCost):
    def solve(self, spec, state_a, state_b):
        return {g.name: torch.arange(g.size) for g in spec.permutable}


def test_broken_costs_fail():
    with pytest.raises(AssertionError, match=r"matrix \(\d+, 1\), not"):
        testing.check_cost(Transposed())
    with pytest.raises(AssertionError, match="a planted permutation was not recovered"):
        testing.check_cost(Anti())
    with pytest.raises(AssertionError, match="a planted permutation was not recovered"):
        testing.check_cost(Identity())
    testing.check_cost(Identity(), recovery=False)  # well-formed, if useless


class OffStart(CurveFamily):
    def coefficients(self, t, num_bends):
        c = torch.full((num_bends + 2,), 1.0 / (num_bends + 2), dtype=torch.float64)
        return c


def test_a_family_that_misses_its_end_points_fails():
    with pytest.raises(Exception, match="does not select the end point exactly"):
        testing.check_curve_family(OffStart())


class Forgetful(CurveOptimizer):
    """Keeps a running count it needs but does not checkpoint."""

    def __init__(self, curve, **kwargs):
        super().__init__(curve, **kwargs)
        self.steps = 0

    def sample_t(self):
        self.steps += 1
        return (self.steps % 7) / 7


def test_an_optimizer_that_loses_state_on_resume_fails():
    with pytest.raises(AssertionError, match="a resumed run does not end where an uninterrupted one does"):
        testing.check_optimizer(Forgetful)


class Remembering(Forgetful):
    def state_dict(self):
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps = state["steps"]


def test_an_optimizer_that_keeps_its_state_passes():
    testing.check_optimizer(Remembering)


class Shuffle(nn.Module):
    def forward(self, x):
        return x.flip(1)


def _shuffle_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), Shuffle(), nn.ReLU(), nn.Linear(4, 2)).double()


def test_an_unsound_rule_fails_and_a_sound_one_passes():
    x = torch.randn(5, 3, dtype=torch.double)
    with pytest.raises(AssertionError, match="changed the function"):
        testing.check_rule(Shuffle, [(_shuffle_model(), x)], rule=passthrough)  # flip is not a pass-through

    def flip_rule(ctx):
        t = ctx.tensor("input")
        ctx.fix(t[1], "flip reverses the units")
        return ctx.out(t.layouts)

    testing.check_rule(Shuffle, [(_shuffle_model(), x)], rule=flip_rule)
    with pytest.raises(AssertionError, match="never calls"):
        testing.check_rule(Shuffle, [(nn.Sequential(nn.Linear(3, 2)).double(), x)], rule=flip_rule)


_BROKEN_UNDER_O = """
import sys

import torch
import torch.nn as nn

from modeconn import testing
from modeconn.plugin import WeightCost, passthrough


class Identity(WeightCost):
    def solve(self, spec, state_a, state_b):
        return {g.name: torch.arange(g.size) for g in spec.permutable}


class Shuffle(nn.Module):
    def forward(self, x):
        return x.flip(1)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), Shuffle(), nn.ReLU(), nn.Linear(4, 2)).double()
x = torch.randn(5, 3, dtype=torch.double)
print("optimize", sys.flags.optimize)
for name, check in (
    ("cost", lambda: testing.check_cost(Identity())),
    ("rule", lambda: testing.check_rule(Shuffle, [(model, x)], rule=passthrough)),
):
    try:
        check()
    except AssertionError as e:
        print(name, "fails:", str(e).splitlines()[0])
    else:
        print(name, "passes")
"""


def test_broken_plugins_fail_under_python_O(tmp_path):
    """``python -O`` strips ``assert`` statements: the kit's checks must fail a broken plugin there too."""
    import subprocess
    import sys

    script = tmp_path / "broken.py"
    script.write_text(_BROKEN_UNDER_O)
    done = subprocess.run(
        [sys.executable, "-O", str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "optimize 1"
    assert len(lines) == 3, done.stdout
    for line, (name, message) in zip(
        lines[1:],
        [
            ("cost", "a planted permutation was not recovered"),
            ("rule", "changed the function"),
        ],
    ):
        assert line.startswith(f"{name} fails:") and message in line, line
