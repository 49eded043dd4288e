"""Attention heads of fused q/k/v projections cut into heads in other orders than ``(3, H, d)``.

GPT-NeoX views its fused projection as ``(…, heads, 3·d)`` and chunks each head's units into
q, k and v: the heads move (each chunk is the same part of every head), with its partial
rotary's dims merged across heads. Tiny random-init models from configs, no downloads: three
random permutations of every group, heads included, keep the logits, and ``align(A, πA)``
gives back A for weight matching and correlation."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from modeconn import align, discover, permute

T = pytest.importorskip("transformers")

COSTS = ("weight_matching", "correlation")


def _neox(seed: int = 0) -> nn.Module:
    config = T.GPTNeoXConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.25, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _noisy(T.GPTNeoXForCausalLM(config).eval())


def _noisy(model: nn.Module) -> nn.Module:
    """Every parameter moved off its initial value: biases start at zero and norms at one,
    which would hide a bias or norm weight a permutation left behind."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _tokens(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (n, 8), generator=g)}


def _recovered(a: nn.Module, aligned: nn.Module) -> list[str]:
    """The tensors of ``aligned`` that differ from ``a``'s (none when A came back)."""
    got = aligned.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, got[k])]


def _keeps_the_logits(model: nn.Module, spec, inputs: dict) -> None:
    with torch.no_grad():
        y = model(**inputs).logits
        for seed in (0, 1, 2):
            perms = spec.random_permutation(seed)
            permuted = permute(model, spec, perms)
            assert _recovered(model, permuted)
            torch.testing.assert_close(permuted(**inputs).logits, y, rtol=1e-4, atol=1e-5)


def _moved_heads(spec) -> list:
    return [h for h in spec.heads if h.permutable]


def test_neox_interleaved_qkv_heads_move_and_keep_the_logits():
    model, inputs = _neox(), _tokens(2)
    spec = discover(model, inputs)
    moved = _moved_heads(spec)
    assert len(moved) == 2 and all(h.size == 4 for h in moved), str(spec)  # every layer's heads
    for h in moved:  # the fused rows move 24 at a time (q, k, v of a head), dense's columns 8
        inner = {(s.tensor.rsplit(".", 2)[-2], s.axis): s.inner for s in h.slices}
        assert inner == {("query_key_value", 0): 24, ("dense", 1): 8}, h.slices
    permutable, hidden = spec.units()
    assert permutable == hidden - 32, str(spec)  # only the rotary dims: 2 of q, 2 of k in 4 heads, 2 layers
    _keeps_the_logits(model, spec, inputs)
    order = torch.tensor([1, 0, 3, 2])  # the same move by hand keeps them (BLOOM's below does not)
    moved = permute_heads_by_hand(model, "gpt_neox.layers.0.attention", order, block=24, out_block=8)
    with torch.no_grad():
        torch.testing.assert_close(moved(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cost", COSTS)
def test_align_gives_back_a_permuted_neox(cost):
    a = _neox()
    spec = discover(a, _tokens(2))
    planted = spec.random_permutation(5)
    b = permute(a, spec, planted)
    result = align(a, b, None if cost == "weight_matching" else [_tokens(32)], cost=cost, spec=spec)
    assert not _recovered(a, result.model)
    for h in _moved_heads(spec):
        assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name]))


# -- BLOOM: its heads are held by ALiBi, whatever the layout --------------------------------------


def _bloom(seed: int = 0) -> nn.Module:
    config = T.BloomConfig(
        vocab_size=100, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _noisy(T.BloomForCausalLM(config).eval())


def test_bloom_heads_stay_because_alibi_gives_each_head_its_own_slope():
    """BLOOM's fused projection is viewed as ``(heads, 3, d)``; its heads may not move, as
    ALiBi adds a bias of a different slope to each head's scores: moving the heads' rows and
    columns by hand changes the logits. Discovery leaves them in place, every unit moves."""
    model, inputs = _bloom(), _tokens(2)
    spec = discover(model, inputs)
    assert spec.heads and not _moved_heads(spec), str(spec)
    assert spec.units()[0] == spec.units()[1], str(spec)
    _keeps_the_logits(model, spec, inputs)
    order = torch.tensor([1, 0, 3, 2])  # swap heads 0 and 1, 2 and 3 of the first layer
    moved = permute_heads_by_hand(model, "transformer.h.0.self_attention", order, block=24, out_block=8)
    with torch.no_grad():
        assert not torch.allclose(moved(**inputs).logits, model(**inputs).logits, atol=1e-4)


def permute_heads_by_hand(
    model: nn.Module, attn: str, order: torch.Tensor, block: int, out_block: int
) -> nn.Module:
    """A copy of ``model`` whose heads of attention module ``attn`` stand in ``order``: the
    fused projection's rows in blocks of ``block``, the output projection's columns in blocks
    of ``out_block``."""

    moved = copy.deepcopy(model)
    m = moved.get_submodule(attn)
    rows = (order[:, None] * block + torch.arange(block)).reshape(-1)
    cols = (order[:, None] * out_block + torch.arange(out_block)).reshape(-1)
    with torch.no_grad():
        m.query_key_value.weight.copy_(m.query_key_value.weight[rows])
        m.query_key_value.bias.copy_(m.query_key_value.bias[rows])
        m.dense.weight.copy_(m.dense.weight[:, cols])
    return moved
