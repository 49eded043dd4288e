"""Generated architectures (generated.py): whatever discovery lets be permuted keeps the
function, and alignment recovers a planted permutation exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import align, discover, permute
from modeconn.alignment import head_view

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


def _heads_holding_residual_channels(generated):
    """Found by the suite's random draw: op4's heads hold op0's channels (which op3 also reads)."""
    Op, Value = generated.Op, generated.Value
    return generated.build(
        [
            Op(kind="conv", inputs=(0,), opts=(1, 1, 4, "plain"), out=Value(kind="img", c=4, h=4)),
            Op(kind="to_tok", inputs=(1,), opts=(), out=Value(kind="tok", c=4, h=16)),
            Op(kind="act", inputs=(0,), opts=("relu",), out=Value(kind="img", c=3, h=4)),
            Op(kind="attn", inputs=(2,), opts=(1, False, "sdpa", False), out=Value(kind="tok", c=4, h=16)),
            Op(kind="attn", inputs=(2,), opts=(1, False, "sdpa", True), out=Value(kind="tok", c=4, h=16)),
        ]
    ).eval()


@pytest.mark.parametrize("cost", ["weight_matching", "correlation"])
def test_align_recovers_a_permutation_when_heads_hold_another_layers_units(generated, cost):
    x = generated.inputs(n=96)
    a = _heads_holding_residual_channels(generated)
    spec = discover(a, x[:2])
    for seed in range(3):
        b = permute(a, spec, spec.random_permutation(seed))
        recovered = align(a, b, x, cost=cost, spec=spec, batch_size=32).model.state_dict()
        wrong = [k for k, v in a.state_dict().items() if not torch.equal(v, recovered[k])]
        assert not wrong, f"{cost} did not recover {wrong[:4]} (seed {seed})"


def _elements(groups):
    """(tensor, axis, index) of every entry the groups' slices move."""
    return {
        (sl.tensor, sl.axis, sl.start + i)
        for g in groups
        for sl in g.slices
        for i in range(g.size * sl.inner)
    }


@GEN
@given(data=st.data())
def test_head_view_keeps_every_slice_and_round_trips(data, generated):
    """The flat view of heads loses no slice a group permutes, and its permutations expand to
    the spec's and flatten back."""
    a = generated.build(data.draw(generated.plans(), label="plan")).eval()
    spec = discover(a, generated.inputs()[:2])
    view = head_view(spec)
    flattened = {f.name for s in view.structures for f in s.families} | {s.heads for s in view.structures}
    kept = [g for g in spec.permutable if g.name not in flattened and g.kind != "heads"]
    inside = [spec.groups[n] for s in view.structures for f in s.families for h in f.groups for n in h if n]
    inside = [g for g in inside if g.permutable]  # a fixed group's slices never move
    assert _elements(kept + inside) <= _elements(view.spec.groups.values())
    perms = spec.random_permutation(data.draw(st.integers(0, 99), label="perm seed"))
    back = {**spec.identity(), **view.expand(view.flatten(perms))}
    for g in spec.permutable:
        assert torch.equal(torch.as_tensor(back[g.name]), torch.as_tensor(perms[g.name])), g.name
