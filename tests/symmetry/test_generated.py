"""Generated architectures (generated.py): whatever discovery lets be permuted keeps the
function, and alignment recovers a planted permutation exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import align, discover, permute

GEN = settings(
    max_examples=int(__import__("os").environ.get("GEN_EXAMPLES", 120)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@GEN
@given(data=st.data())
def test_generated_nets_keep_their_function(data, generated, check):
    plan = data.draw(generated.plans(), label="plan")
    model = check.randomize(generated.build(plan)).eval()
    x = generated.inputs()
    spec = discover(model, x)
    check.assert_equivalent(model, x, seeds=(0, 1), spec=spec, require_permutable=False)
    check.assert_no_group_moves_fixed_units(spec)


@settings(
    max_examples=int(__import__("os").environ.get("GEN_EXAMPLES", 120)) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), cost=st.sampled_from(["weight_matching", "correlation", "l2_preact"]))
def test_generated_nets_align_recovers_a_planted_permutation(data, cost, generated, check):
    """With weights as built (BatchNorm at its initial values) or perturbed and BatchNorm
    statistics of the data."""
    plan = data.draw(generated.plans(), label="plan")
    x = generated.inputs(n=96)
    a = generated.build(plan)
    if data.draw(st.booleans(), label="perturbed"):
        a = modeconn.update_bn(check.randomize(a), [x])
    a.eval()
    spec = discover(a, x[:2])
    b = permute(a, spec, spec.random_permutation(data.draw(st.integers(0, 99), label="perm seed")))
    result = align(a, b, x, cost=cost, spec=spec, batch_size=32)
    recovered = result.model.state_dict()
    wrong = [k for k, v in a.state_dict().items() if not torch.equal(v, recovered[k])]
    assert not wrong, f"{cost} did not recover {wrong[:4]}"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "found 2026-12-07, not fixed: head_view flattens op4's heads with their units, which are "
        "op0's channels, and drops op0's other slices (op3's q/k input axis) from the flat spec, "
        "so weight matching matches op3's q/k dims on unpermuted columns (a valid symmetry, not A)"
    ),
)
def test_weight_matching_recovers_a_permutation_when_heads_hold_another_layers_units(generated):
    Op, Value = generated.Op, generated.Value
    plan = [
        Op(kind="conv", inputs=(0,), opts=(1, 1, 4, "plain"), out=Value(kind="img", c=4, h=4)),
        Op(kind="to_tok", inputs=(1,), opts=(), out=Value(kind="tok", c=4, h=16)),
        Op(kind="act", inputs=(0,), opts=("relu",), out=Value(kind="img", c=3, h=4)),
        Op(kind="attn", inputs=(2,), opts=(1, False, "sdpa", False), out=Value(kind="tok", c=4, h=16)),
        Op(kind="attn", inputs=(2,), opts=(1, False, "sdpa", True), out=Value(kind="tok", c=4, h=16)),
    ]
    x = generated.inputs(n=96)
    a = generated.build(plan).eval()
    spec = discover(a, x[:2])
    b = permute(a, spec, spec.random_permutation(0))
    recovered = align(a, b, x, cost="weight_matching", spec=spec, batch_size=32).model.state_dict()
    wrong = [k for k, v in a.state_dict().items() if not torch.equal(v, recovered[k])]
    assert not wrong, f"weight matching did not recover {wrong[:4]}"
