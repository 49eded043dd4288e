"""``modeconn.merge`` on Hugging Face models at tiny size and random init: a model merged with
permuted copies of itself is the model again (for every cost, repaired or not), the merge is
of the inputs' class with its tied weights still tied and survives ``save_pretrained`` /
``from_pretrained``, and two independently initialised models merge with and without data."""

from __future__ import annotations

import copy
import functools
import warnings
from collections import defaultdict

import pytest
import torch

import modeconn
from modeconn.merging import ReferenceStatistics

T = pytest.importorskip("transformers")

FAMILIES = ("gpt2", "bert")
COSTS = ("weight_matching", "correlation", "l2_preact")
VOCAB = 30


def _build(family: str, seed: int = 0, **config_changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # configs' notes on token ids of a tiny vocabulary
        if family == "gpt2":
            config = T.GPT2Config(
                vocab_size=VOCAB,
                n_embd=16,
                n_layer=2,
                n_head=2,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=0,
            )
            config.update(config_changes)
            return T.GPT2LMHeadModel(config).eval()
        if family == "bert":  # the masked-LM head: decoder weight and bias tied, biases and LayerNorms
            config = T.BertConfig(
                vocab_size=VOCAB,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=16,
            )
            config.update(config_changes)
            return T.BertForMaskedLM(config).eval()
        if family == "llama":  # grouped-query attention, rotary embeddings, no biases
            config = T.LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=16,
                bos_token_id=0,
                eos_token_id=0,
            )
            config.update(config_changes)
            return T.LlamaForCausalLM(config).eval()
    raise ValueError(family)


def _tokens(n: int = 32, length: int = 12, seed: int = 0) -> list[dict]:
    """Two batches of random token ids (the merge's data: alignment and REPAIR statistics)."""
    ids = torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": c} for c in ids.split(n // 2)]


EXAMPLE = {"input_ids": torch.arange(12).view(2, 6)}  # for the trace alone, when a merge has no data


def _logits(model: torch.nn.Module, batch: dict = EXAMPLE) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _ties(model: torch.nn.Module) -> list[list[str]]:
    """The groups of parameter names that are one tensor."""
    names = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        names[id(p)].append(name)
    return sorted(v for v in names.values() if len(v) > 1)


def _assert_tied_like(model: torch.nn.Module, original: torch.nn.Module) -> None:
    ties = _ties(original)
    assert ties, "the fixture models tie their output embedding to the input embedding"
    assert _ties(model) == ties
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in ties:
        assert len({params[n].data_ptr() for n in group}) == 1, group


@functools.cache
def _model_and_copies(family: str, **config_changes):
    """A model, its spec, and two copies of it with every group randomly permuted."""
    model = _build(family, **config_changes)
    spec = modeconn.discover(model, EXAMPLE)
    copies = [modeconn.permute(model, spec, spec.random_permutation(seed)) for seed in (1, 2)]
    for c in copies:  # the copies really are permuted (and compute the same function)
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in c.state_dict().items())
        torch.testing.assert_close(_logits(c), _logits(model), rtol=1e-5, atol=1e-5)
    return model, spec, copies


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_merged_with_permuted_copies_of_itself_is_the_model(family, cost):
    model, spec, copies = _model_and_copies(family)
    models = [model, *copies]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    data = None if cost == "weight_matching" else _tokens()
    result = modeconn.merge(models, data, cost=cost, repair=False, example_inputs=EXAMPLE)
    merged = result.model
    assert type(merged) is type(model)
    batch = _tokens(seed=1)[0]
    torch.testing.assert_close(_logits(merged, batch), _logits(model, batch), rtol=1e-5, atol=1e-5)
    _assert_tied_like(merged, model)
    # every input was put back into one basis: the aligned models are one set of weights
    for aligned in result.aligned[1:]:
        for k, v in aligned.state_dict().items():
            torch.testing.assert_close(v, result.aligned[0].state_dict()[k], rtol=1e-5, atol=1e-6)
    assert result.history[0]["moved"] > 0
    for m, state in zip(models, before):  # the inputs are left as they were
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def _relative_error(model: torch.nn.Module, expected_of: torch.nn.Module) -> float:
    batch = _tokens(seed=1)[0]
    expected = _logits(expected_of, batch)
    return float((_logits(model, batch) - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_repairing_the_merge_of_permuted_copies_changes_its_logits_by_little(family, cost):
    """The merge is the model itself, so REPAIR should leave it as it is; what moves it here is
    the fold's variance floor, relative to the target's (a unit is scaled by ``1/√(1 + 1e-6)``
    when ``σ = σ_t``), and float32 rounding: the bound is 5e-3 of the largest logit. The data is
    one batch, so the correcting pass's per-batch normalization is the whole data's (the next
    test measures what several batches add). ``initializer_range`` 0.2 keeps every corrected
    unit's σ ≥ 0.05 (asserted); the default init's small units are the test after next."""
    model, spec, copies = _model_and_copies(family, initializer_range=0.2)
    data = [{"input_ids": torch.cat([b["input_ids"] for b in _tokens()])}]  # one batch of 32
    stats = ReferenceStatistics.measure([model], data)
    assert len(stats.sites) >= 10
    assert min(float(s.min()) for s in stats.stds[0].values()) >= 0.05
    result = modeconn.merge([model, copies[0]], data, cost=cost, repair=True, spec=spec)
    assert type(result.model) is type(model)
    assert 0 < _relative_error(result.model, model) <= 5e-3  # > 0: REPAIR did fold something in
    _assert_tied_like(result.model, model)
    assert any("repair left 1 layer(s)" in n for n in result.notes), result.notes  # the output layer


@pytest.mark.parametrize("family", FAMILIES)
def test_repair_over_several_batches_moves_the_logits_by_more_the_smaller_the_batches(family):
    """REPAIR's correcting pass normalizes each corrected layer's output with its batch's own
    statistics before the next layers are measured (as its reset BatchNorms do in train
    mode), while the folded correction is one affine map for all data: the smaller the batches,
    the further the later layers' measured statistics are from the folded model's. Measured on
    128 sequences of 12 tokens: 2e-4 to 3e-4 of the largest logit in one batch, about 0.5% in
    batches of 32, 2-3% in batches of 8 (roughly 1 / batch size). A merge of a model with
    itself shows it alone (the ε term is as in the test above)."""
    model, spec, copies = _model_and_copies(family, initializer_range=0.2)
    ids = torch.randint(0, VOCAB, (128, 12), generator=torch.Generator().manual_seed(0))
    errors = []
    for size in (128, 32, 8):
        data = [{"input_ids": c} for c in ids.split(size)]
        merged = modeconn.merge(
            [model, copies[0]], data, cost="weight_matching", repair=True, spec=spec
        ).model
        errors.append(_relative_error(merged, model))
    assert errors[0] < errors[1] < errors[2] <= 0.1, errors


def test_repairing_a_model_against_itself_leaves_it_as_it_is_at_the_default_init():
    model = _build("gpt2")
    repaired = modeconn.repair(copy.deepcopy(model), [model], _tokens()[:1])
    expected = _logits(model)
    assert (_logits(repaired) - expected).abs().max() <= 0.01 * expected.abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_merge_is_saved_and_loaded_with_its_ties_and_logits(family, tmp_path):
    a, b = _build(family, seed=0), _build(family, seed=1)
    merged = modeconn.merge([a, b], _tokens(), cost="correlation", repair=True).model
    _assert_tied_like(merged, a)
    merged.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = type(a).from_pretrained(tmp_path).eval()
    _assert_tied_like(loaded, a)
    batch = _tokens(seed=1)[0]
    assert torch.equal(_logits(loaded, batch), _logits(merged, batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_two_independent_models_merge_by_weight_matching_without_data(family):
    a, b = _build(family, seed=0), _build(family, seed=1)
    result = modeconn.merge([a, b], cost="weight_matching", example_inputs=EXAMPLE)
    merged = result.model
    assert type(merged) is type(a)
    assert any("not repaired" in n for n in result.notes), result.notes  # "auto" without data
    assert result.history[0]["moved"] > 0
    _assert_tied_like(merged, a)
    # the merge is the average of the aligned models, each the function of its input
    merged_state = merged.state_dict()
    for k, v in merged_state.items():
        if v.is_floating_point():
            mean = (result.aligned[0].state_dict()[k] + result.aligned[1].state_dict()[k]) / 2
            torch.testing.assert_close(v, mean, rtol=1e-6, atol=1e-7, msg=k)
    for original, aligned, perms in zip((a, b), result.aligned, result.perms):
        for k, v in modeconn.permute(original, result.spec, perms).state_dict().items():
            assert torch.equal(v, aligned.state_dict()[k]), k
        torch.testing.assert_close(_logits(aligned), _logits(original), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(_logits(merged)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_two_independent_models_merge_by_correlation_with_data(family):
    a, b = _build(family, seed=0), _build(family, seed=1)
    data = _tokens()
    plain = modeconn.merge([a, b], data, weights=[1, 3], repair=False)
    assert plain.weights == [0.25, 0.75] and any("normalized" in n for n in plain.notes)
    for k, v in plain.model.state_dict().items():
        if v.is_floating_point():
            mix = 0.25 * plain.aligned[0].state_dict()[k] + 0.75 * plain.aligned[1].state_dict()[k]
            torch.testing.assert_close(v, mix, rtol=1e-6, atol=1e-7, msg=k)
    repaired = modeconn.merge([a, b], data, weights=[1, 3])  # repair="auto" with data: repaired
    assert type(repaired.model) is type(a)
    assert all(torch.equal(p, plain.perms[1][g]) for g, p in repaired.perms[1].items())  # one alignment
    assert not torch.equal(_logits(repaired.model), _logits(plain.model))
    _assert_tied_like(repaired.model, a)
    assert torch.isfinite(_logits(repaired.model)).all()


def test_a_llama_merged_with_a_permuted_copy_of_itself_is_the_model():
    model = _build("llama")
    spec = modeconn.discover(model, EXAMPLE)
    permuted = modeconn.permute(model, spec, spec.random_permutation(1))
    merged = modeconn.merge([model, permuted], cost="weight_matching", spec=spec).model
    torch.testing.assert_close(_logits(merged), _logits(model), rtol=1e-5, atol=1e-5)
