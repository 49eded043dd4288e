"""The rule table itself is tested: every key has a micro-model case that calls it (in the
forms listed in rule_cases.py), and every case keeps its function under random permutations
of every permutable group, in eval and train mode — or its op fixes the groups, with a reason."""

from __future__ import annotations

import pytest
import torch

from modeconn import discover, permute, testing
from modeconn.symmetry.context import RULES


def _build(case, cases):
    torch.manual_seed(0)
    return cases.Micro(case).double()


def test_every_rule_has_a_case(rule_cases, exported_calls):
    """A rule added without a case fails here. The ATen ops of torch.export graphs are covered
    by the cases that call them once exported."""
    covered = {_name(k) for c in rule_cases.CASES for k in c.keys} | {_name(k) for k in exported_calls}
    missing = [k for k in RULES.registry().names() if k not in covered]
    assert not missing, f"rules without a case in tests/symmetry/rule_cases.py: {missing}"


@pytest.fixture(scope="module")
def exported_calls(rule_cases) -> set:
    """The ATen ops (overload packets) the cases call once captured with torch.export."""
    from modeconn.capture import model_inputs
    from modeconn.symmetry.discovery import trace_model

    called = set()
    for case in rule_cases.CASES:
        if case.requires == "cuda" and not torch.cuda.is_available():
            continue
        model = _build(case, rule_cases).eval()
        gm = trace_model(model, model_inputs(model, _input(case, rule_cases)), capture="export")
        called |= {
            n.target.overloadpacket for n in gm.graph.nodes if isinstance(n.target, torch._ops.OpOverload)
        }
    return called


def _input(case, cases) -> torch.Tensor:
    x = cases.example_input(case)
    return x.double() if x.is_floating_point() else x


def _name(key) -> str:
    return RULES.key_name(key)


def test_case_count(rule_cases):
    # the table is big; say how big, so that a shrinking table is noticed
    assert len(rule_cases.CASES) >= 500
    assert len(RULES.registry()) >= 350


def test_rule_case(rule_case, rule_cases, check):
    """Through the contract kit (modeconn.testing.check_rule): the key is called, and random
    permutations keep the function; then the case's own expectation, and every group moves."""
    case = rule_case
    if case.requires == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = check.randomize(_build(case, rule_cases)).eval()
    x = rule_cases.example_input(case)
    x = x.double() if x.is_floating_point() else x
    for key in case.keys:
        testing.check_rule(key, [(model, x)])
    spec = discover(model, x)
    perms = spec.random_permutation(0)
    before, after = model.state_dict(), permute(model, spec, perms).state_dict()
    for g in spec.permutable:
        if not torch.equal(perms[g.name], torch.arange(g.size)):
            assert any(not torch.equal(before[t.tensor], after[t.tensor]) for t in g.slices), (
                f"{g.name} did not move"
            )
    p1 = [g for g in spec.groups.values() if g.name == "p1" or g.name.startswith("p1[")]
    if case.expect == "free":  # the producer (or some piece of it, after a split) stays permutable
        assert any(g.permutable for g in p1), f"p1 should stay permutable: {[g.reason for g in p1]}"
    elif case.expect == "fixed":
        assert p1 and all(not g.permutable and g.fixes for g in p1), "p1 should be fixed, with a reason"


def test_rule_case_exported(rule_case, rule_cases, check):
    """The case captured with torch.export instead of fx, so through the ATen rules: random
    permutations of whatever they leave permutable keep the function, in eval and train mode."""
    case = rule_case
    if case.requires == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = check.randomize(_build(case, rule_cases)).eval()
    x = _input(case, rule_cases)
    spec = discover(model, x, capture="export")
    assert spec.capture == "export"
    check.assert_equivalent(model, x, seeds=(0, 1), spec=spec, require_permutable=False)
