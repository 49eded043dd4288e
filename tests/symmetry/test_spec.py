import json

import pytest
import torch

import modeconn
from modeconn import PermutationSpec, discover, permute
from modeconn.errors import SymmetryError


@pytest.fixture
def spec():
    model = modeconn.create_model("resnet20", width=4)
    return discover(model, torch.randn(2, 3, 16, 16))


def test_json_round_trip(spec):
    again = PermutationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.to_dict() == spec.to_dict()
    assert PermutationSpec.from_json(spec.to_json()).groups == spec.groups


def test_str_is_a_readable_table(spec):
    text = str(spec)
    assert text.splitlines()[0].startswith(
        "PermutationSpec(CifarResNet): 12/12 groups of hidden units permutable"
    )
    assert "layer1.0.conv1" in text and text.endswith("never permuted, not hidden units: 1 model output")


def test_identity_and_random_permutation(spec):
    ident = spec.identity()
    assert set(ident) == set(spec.groups)
    a, b = spec.random_permutation(5), spec.random_permutation(5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], spec.random_permutation(6)[k]) for k in a)
    assert torch.equal(a["fc"], torch.arange(10))  # fixed groups stay put


def test_permute_inverse_restores_state(spec):
    model = modeconn.create_model("resnet20", width=4)
    perms = spec.random_permutation(2)
    inverse = {k: torch.argsort(p) for k, p in perms.items()}
    back = permute(permute(model, spec, perms), spec, inverse)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_permute_inplace_and_copy(spec):
    model = modeconn.create_model("resnet20", width=4)
    w = model.conv1.weight.detach().clone()
    out = permute(model, spec, spec.random_permutation(0))
    assert out is not model and torch.equal(model.conv1.weight, w)
    assert permute(model, spec, spec.random_permutation(0), inplace=True) is model
    assert not torch.equal(model.conv1.weight, w)


def test_invalid_permutations_are_rejected(spec):
    with pytest.raises(SymmetryError, match="no group named"):
        spec.check({"nope": torch.arange(3)})
    with pytest.raises(SymmetryError, match="not a permutation"):
        spec.check({"conv1": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(SymmetryError, match="fixed"):
        spec.check({"fc": torch.arange(10).flip(0)})
