"""Generated architectures (generated.py): whatever discovery lets be permuted keeps the
function, and alignment recovers a planted permutation exactly."""

from __future__ import annotations

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
