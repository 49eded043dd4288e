"""modeconn.symmetry.rules.aten on the view-only ops torch.export records: ``aten.alias``
(``x[...]``), ``aten.positive`` (``+x``), ``aten.resolve_conj``/``resolve_neg`` and
``aten.detach`` keep every element where it is, so they pass layouts (and heads) through, and
a product with an alias of a weight is a layer. Phi-3 aliases its attention output."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from modeconn import align, discover, permute

COSTS = ("weight_matching", "correlation")


class AliasNet(nn.Module):
    """An MLP whose activations and weights pass through aliases and no-op views."""

    def __init__(self, d_in: int = 5, h1: int = 7, h2: int = 6, d_out: int = 3):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(h1, d_in) / 2), nn.Parameter(torch.randn(h1) / 5)
        self.fc2, self.out = nn.Linear(h1, h2), nn.Linear(h2, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ self.w1[...].T + self.b1)  # an alias of a weight, transposed
        h = (+h[...]).resolve_conj().resolve_neg()
        h = torch.tanh(self.fc2(h.detach() + h - h.detach()))
        return self.out(h[...])


def _recovered(a: nn.Module, aligned: nn.Module) -> list[str]:
    got = aligned.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, got[k])]


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_aliases_and_no_op_views_keep_units_movable(capture, check):
    torch.manual_seed(0)
    a, x = AliasNet().eval(), torch.randn(64, 5)
    spec = discover(a, x[:2], capture=capture)
    if capture == "export":
        ops = {str(n.target.overloadpacket) for n in spec.graph.graph.graph.nodes if n.op == "call_function"}
        assert {"aten.alias", "aten.positive", "aten.detach"} <= ops, ops
    assert spec.units() == (13, 13), str(spec)
    check.assert_equivalent(a, x[:8], seeds=(0, 1, 2), spec=spec)
    b = permute(a, spec, spec.random_permutation(3))
    assert _recovered(a, b)
    for cost in COSTS:
        result = align(a, b, None if cost == "weight_matching" else [x], cost=cost, spec=spec)
        assert not _recovered(a, result.model), cost


# -- Phi-3: ``attn_output[...]``-style aliases between attention and its output projection -----

T = pytest.importorskip("transformers")


def _phi3(seed: int = 0) -> nn.Module:
    config = T.Phi3Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.Phi3ForCausalLM(config).eval()


def _tokens(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (n, 8), generator=g)}


def test_phi3_heads_move_through_its_aliases_and_keep_the_logits():
    model, inputs = _phi3(), _tokens(2)
    spec = discover(model, inputs)
    assert any(n.target == torch.ops.aten.alias.default for n in spec.graph.graph.graph.nodes)
    assert not spec.fixed_ops(), spec.fixed_ops()
    assert sum(h.permutable for h in spec.heads) == 2, str(spec)  # one group of heads per layer
    with torch.no_grad():
        y = model(**inputs).logits
        for seed in (0, 1, 2):
            permuted = permute(model, spec, spec.random_permutation(seed))
            torch.testing.assert_close(permuted(**inputs).logits, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cost", COSTS)
def test_align_gives_back_a_permuted_phi3(cost):
    a = _phi3()
    spec = discover(a, _tokens(2))
    planted = spec.random_permutation(5)
    b = permute(a, spec, planted)
    result = align(a, b, None if cost == "weight_matching" else [_tokens(32)], cost=cost, spec=spec)
    assert not _recovered(a, result.model)
    for h in spec.heads:
        if h.permutable:
            assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name]))
