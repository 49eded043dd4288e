"""The rule table itself is tested: every key has a micro-model case that calls it (in the
forms listed in rule_cases.py), and every case keeps its function under random permutations
of every permutable group, in eval and train mode — or its op fixes the groups, with a reason."""

from __future__ import annotations

import pytest
import torch

from modeconn import discover
from modeconn.plugin_manager import get_registry
from modeconn.symmetry.discovery import model_inputs, trace_model


def _key_of(node, gm):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    if node.op == "call_method":
        return f"method:{node.target}"
    if node.op == "call_function":
        return node.target
    return None


def _called_keys(model, x) -> set:
    keys = set()
    inputs = model_inputs(model, x)
    for training in (False, True):
        gm = trace_model(model, inputs, training=training)
        for node in gm.graph.nodes:
            key = _key_of(node, gm)
            if isinstance(key, type):
                keys.update(key.__mro__)
            elif key is not None:
                keys.add(key)
    return keys


def _build(case, cases):
    torch.manual_seed(0)
    return cases.Micro(case).double()


def test_every_rule_has_a_case(rule_cases):
    """A rule added without a case fails here."""
    covered = {k for c in rule_cases.CASES for k in c.keys}
    missing = [k for k in get_registry("rule").names() if k not in {_name(c) for c in covered}]
    assert not missing, f"rules without a case in tests/symmetry/rule_cases.py: {missing}"


def _name(key) -> str:
    from modeconn.plugin_manager import key_name

    return key_name(key)


def test_case_count(rule_cases):
    # the table is big; say how big, so that a shrinking table is noticed
    assert len(rule_cases.CASES) >= 500
    assert len(get_registry("rule")) >= 350


def test_rule_case(rule_case, rule_cases, check):
    case = rule_case
    if case.requires == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = check.randomize(_build(case, rule_cases)).eval()
    x = rule_cases.example_input(case)
    x = x.double() if x.is_floating_point() else x
    called = _called_keys(model, x)
    uncalled = [k for k in case.keys if k not in called]
    assert not uncalled, f"the case never calls {uncalled}"
    spec = discover(model, x)
    perms_checked = check.assert_equivalent(model, x, seeds=(0, 1, 2), spec=spec, require_permutable=False)
    assert perms_checked is spec
    p1 = [g for g in spec.groups.values() if g.name == "p1" or g.name.startswith("p1[")]
    if case.expect == "free":  # the producer (or some piece of it, after a split) stays permutable
        assert any(g.permutable for g in p1), f"p1 should stay permutable: {[g.reason for g in p1]}"
    elif case.expect == "fixed":
        assert p1 and all(not g.permutable and g.fixes for g in p1), "p1 should be fixed, with a reason"
