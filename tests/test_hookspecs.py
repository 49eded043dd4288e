"""The hookspec module is the plugin author's manual: every hook says what to register, with
what, what it is checked against, how to check it, and when it is called."""

import inspect

import pytest

from modeconn import hookspecs
from modeconn.plugin_manager import declared_kinds


def _hooks():
    return {n: f for n, f in vars(hookspecs).items() if n.startswith("modeconn_") and callable(f)}


def test_every_kind_has_one_documented_hook():
    import modeconn.plugin  # noqa: F401  (declares every kind)

    assert {k.hook for k in declared_kinds().values()} == set(_hooks())


@pytest.mark.parametrize(
    "hook, what, check",
    [
        (
            "modeconn_register_costs",
            ("ActivationCost", "WeightCost", "matrix(stats)", "solve("),
            "check_cost",
        ),
        (
            "modeconn_register_curves",
            ("CurveFamily", "coefficients(t, num_bends)", "exactly at t = 0"),
            "check_curve_family",
        ),
        (
            "modeconn_register_optimizers",
            ("CurveOptimizer", "the class, not an instance", "perturb(x, y, t)"),
            "check_optimizer",
        ),
        (
            "modeconn_register_rules",
            ("RuleContext", "TensorLayout", '"method:<name>"', "unsupported"),
            "check_rule",
        ),
    ],
)
def test_each_hook_is_a_manual(hook, what, check):
    doc = " ".join((inspect.getdoc(_hooks()[hook]) or "").split())
    assert "registry.add(" in doc
    for phrase in what:
        assert phrase in doc, f"{hook} does not explain {phrase!r}"
    assert f"modeconn.testing.{check}" in doc
    assert "Called once" in doc and doc.rstrip().endswith("Returns nothing.")
