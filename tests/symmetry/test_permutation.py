"""``permute`` moves BatchNorm running statistics with their units (a model whose buffers
stayed put computes something else in eval mode); ``soft_permute_state_dict``: with
permutation matrices it is ``permute_state_dict`` exactly, on generated architectures (every
slice kind discovery produces: concat offsets, grouped blocks, heads), and it is
differentiable in the matrices."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import discover, permutation_matrix, permute, permute_state_dict, soft_permute_state_dict
from modeconn.symmetry.permutation import axis_indices, permute_tensor


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _mlp_bn():
    return nn.Sequential(
        nn.Linear(7, 9),
        nn.BatchNorm1d(9),
        nn.ReLU(),
        nn.Linear(9, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )


_BN_NETS = {"conv_bn": (_ConvBN, (3, 6, 6)), "mlp_bn": (_mlp_bn, (7,))}


def _with_running_statistics(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A net whose BatchNorm running statistics are far from their initial 0 and 1 and differ
    unit by unit (a few train-mode passes over shifted, scaled data), in eval mode."""
    ctor, shape = _BN_NETS[name]
    torch.manual_seed(0)
    model = ctor().double().train()
    with torch.no_grad():
        for _ in range(4):
            model(3 * torch.randn(16, *shape, dtype=torch.double) + 1)
    return model.eval(), 3 * torch.randn(8, *shape, dtype=torch.double) + 1


def _bn_modules(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", sorted(_BN_NETS))
def test_permute_moves_batchnorm_running_statistics_with_their_units(name, inplace):
    model, x = _with_running_statistics(name)
    original = copy.deepcopy(model)
    bns = _bn_modules(model)
    assert len(bns) == 2
    for m in bns.values():  # statistics that show a unit moved without them
        assert int(m.num_batches_tracked) == 4
        assert m.running_mean.std() > 1e-3 and m.running_var.std() > 1e-3
    spec = discover(model, x[:2])
    with torch.no_grad():
        expected = model(x)
    for seed in (0, 1, 2):
        perms = spec.random_permutation(seed)
        source = copy.deepcopy(original) if inplace else model
        permuted = permute(source, spec, perms, inplace=inplace)
        assert (permuted is source) == inplace
        checked = 0
        for bn_name, bn in _bn_modules(permuted).items():
            (group,) = [g for g in spec.permutable if f"{bn_name}.running_mean" in g.tensors]
            perm = perms[group.name]
            assert not torch.equal(perm, torch.arange(group.size))
            before = bns[bn_name]
            assert torch.equal(bn.running_mean, before.running_mean[perm])
            assert torch.equal(bn.running_var, before.running_var[perm])
            assert torch.equal(bn.weight, before.weight[perm]) and torch.equal(bn.bias, before.bias[perm])
            assert torch.equal(bn.num_batches_tracked, before.num_batches_tracked)
            checked += 1
        assert checked == 2
        with torch.no_grad():
            got = permuted.eval()(x)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the model permuted from is left as it was (buffers included)
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_tensor_permuted_a_few_rows_at_a_time_is_the_tensor_permuted_whole(data, generated, check):
    plan = data.draw(generated.plans(), label="plan")
    model = check.randomize(generated.build(plan))
    spec = discover(model, generated.inputs())
    state = model.state_dict()
    perms = spec.random_permutation(data.draw(st.integers(0, 99), label="perm seed"))
    index = axis_indices(spec, perms, {k: v.shape for k, v in state.items()})
    whole = permute_state_dict(state, spec, perms)
    step = data.draw(st.integers(1, 5), label="rows per piece")
    for name, t in state.items():
        if t.dim() == 0:
            continue
        pieces = [permute_tensor(t, name, index, slice(i, i + step)) for i in range(0, t.shape[0], step)]
        assert torch.equal(torch.cat(pieces), whole[name]), name


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
