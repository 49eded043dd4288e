"""``soft_permute_state_dict``: with permutation matrices it is ``permute_state_dict`` exactly,
on generated architectures (every slice kind discovery produces: concat offsets, grouped
blocks, heads), and it is differentiable in the matrices."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import discover, permutation_matrix, permute_state_dict, soft_permute_state_dict


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_soft_permutation_by_permutation_matrices_is_the_hard_permutation(data, generated, check):
    plan = data.draw(generated.plans(), label="plan")
    model = check.randomize(generated.build(plan)).double().eval()
    spec = discover(model, generated.inputs().double())
    perms = spec.random_permutation(data.draw(st.integers(0, 99), label="perm seed"))
    state = model.state_dict()
    hard = permute_state_dict(state, spec, perms)
    soft = soft_permute_state_dict(
        state, spec, {g.name: permutation_matrix(perms[g.name], torch.double) for g in spec.permutable}
    )
    for name, tensor in hard.items():
        assert torch.allclose(soft[name], tensor, rtol=0, atol=1e-12), name


def test_soft_permutation_is_differentiable_and_mixes_units():
    torch.manual_seed(0)
    model = modeconn.create_model("resnet20", width=4)
    spec = discover(model, torch.randn(2, 3, 32, 32))
    group = spec.permutable[0]
    n = group.size
    mix = torch.full((n, n), 1.0 / n, requires_grad=True)  # the barycenter of the Birkhoff polytope
    state = model.state_dict()
    soft = soft_permute_state_dict(state, spec, {group.name: mix})
    sl = group.slices[0]
    block = soft[sl.tensor].narrow(sl.axis, sl.start, n * sl.inner)
    # every unit became the mean of the group's units
    mean = state[sl.tensor].narrow(sl.axis, sl.start, n * sl.inner).unflatten(sl.axis, (n, -1)).mean(sl.axis)
    assert torch.allclose(
        block.unflatten(sl.axis, (n, -1)),
        mean.unsqueeze(sl.axis).expand_as(block.unflatten(sl.axis, (n, -1))),
        atol=1e-6,
    )
    soft[sl.tensor].sum().backward()
    assert mix.grad is not None and mix.grad.abs().sum() > 0


def test_permutation_matrix_convention():
    perm = torch.tensor([2, 0, 1])
    x = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(permutation_matrix(perm) @ x, x[perm])  # unit i of P·x is unit perm[i] of x
