"""The second capture path (torch.export): what it lets be permuted keeps the function, alignment
recovers a planted permutation through it, and Hugging Face transformers — which torch.fx cannot
trace — are captured by it with their ordinary inputs."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import align, discover, permute
from modeconn.symmetry.context import SHARED_KV
from modeconn.symmetry.spec import PermutationSpec

COSTS = ("correlation", "l2_preact", "weight_matching")


def _recovered(a: nn.Module, aligned: nn.Module) -> list[str]:
    got = aligned.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, got[k])]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_exported_generated_nets_keep_their_function(data, generated, check):
    plan = data.draw(generated.plans(), label="plan")
    model = check.randomize(generated.build(plan)).eval()
    x = generated.inputs()
    spec = discover(model, x, capture="export")
    assert spec.capture == "export"
    check.assert_equivalent(model, x, seeds=(0, 1), spec=spec, require_permutable=False)


@pytest.mark.parametrize("net", ["residual", "concat", "depthwise_se", "attention", "sliced"])
def test_exported_fixture_nets_match_fx_and_are_recovered(net, nets, check):
    """On these nets export finds the groups and sites fx finds (named after their tensors, not
    their modules); a planted permutation comes back by every cost."""
    ctor, shape = nets.NETS[net]
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    a = modeconn.update_bn(check.randomize(ctor()), [x]).eval()
    spec = discover(a, x[:2], capture="export")
    by_fx = discover(a, x[:2], capture="fx")
    assert spec.units() == by_fx.units()
    assert _group_shapes(spec) == _group_shapes(by_fx)
    check.assert_equivalent(a, x[:4], spec=spec)
    b = permute(a, spec, spec.random_permutation(11))
    for cost in COSTS:
        assert not _recovered(a, align(a, b, x, cost=cost, spec=spec).model), cost


def _group_shapes(spec: PermutationSpec) -> list:
    """Each permutable group's size and how many sites of each kind observe it."""
    return sorted((g.size, sorted(Counter(s.kind for s in g.sites).items())) for g in spec.permutable)


def test_auto_capture_falls_back_to_export_where_fx_keeps_modules_whole():
    class Gate(nn.Module):  # fx cannot trace a branch on a size it only knows as a proxy
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x) if int(x.shape[-1]) % 2 == 0 and bool(x.shape[0] > 0) else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.gate, self.out = nn.Linear(4, 6), Gate(), nn.Linear(6, 3)

        def forward(self, x):
            return self.out(torch.relu(self.gate(torch.relu(self.inp(x)))))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(3, 4)
    fx_spec = discover(model, x, capture="fx")
    assert "torch.fx cannot trace" in " ".join(g.reason for g in fx_spec.fixed)
    spec = discover(model, x)
    assert spec.capture == "export" and "captured with torch.export" in str(spec)
    assert spec.units() == (12, 12) and fx_spec.units()[0] < 12


def test_a_model_neither_path_captures_gets_one_error_naming_both():
    class ValueBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)  # depends on the data

    with pytest.raises(modeconn.TraceError, match=r"(?s)neither capture path works.*fx: .*export: "):
        discover(ValueBranch(), torch.randn(2, 4))
    with pytest.raises(modeconn.SymmetryError, match="capture must be one of auto, fx, export"):
        discover(ValueBranch(), torch.randn(2, 4), capture="dynamo")


def test_the_capture_is_kept_with_the_spec(nets):
    ctor, shape = nets.NETS["residual"]
    spec = discover(ctor().eval(), torch.randn(2, *shape), capture="export")
    again = PermutationSpec.from_json(spec.to_json())
    assert again.capture == "export" and again.units() == spec.units()
    assert PermutationSpec.from_dict({"groups": []}).capture == "fx"  # specs written before


# -- Hugging Face transformers, at tiny size and random init ----------------------------------


def _families() -> dict:
    T = pytest.importorskip("transformers")
    small = dict(vocab_size=100, max_position_embeddings=64)
    decoder = dict(small, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    decoder.update(num_key_value_heads=2, bos_token_id=0, eos_token_id=0)  # grouped-query attention
    text = {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    bert = T.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **small
    )
    return {
        "bert": (lambda: T.BertForSequenceClassification(bert), text),
        "distilbert": (
            lambda: T.DistilBertForSequenceClassification(
                T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)
            ),
            text,
        ),
        "gpt2": (
            lambda: T.GPT2LMHeadModel(
                T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
            ),
            text,
        ),
        "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**decoder)), text),
        "llama_mha": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**dict(decoder, num_key_value_heads=4))), text),
        "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**decoder)), text),
        "vit": (
            lambda: T.ViTForImageClassification(
                T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
            ),
            {"pixel_values": torch.randn(2, 3, 16, 16)},
        ),
        "t5": (
            lambda: T.T5ForConditionalGeneration(
                T.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
            ),
            {"input_ids": text["input_ids"], "decoder_input_ids": text["input_ids"]},
        ),
    }  # fmt: skip


FAMILIES = ("bert", "distilbert", "gpt2", "llama", "qwen2", "vit", "t5")


def _build(family: str, seed: int = 0) -> tuple[nn.Module, dict]:
    build, inputs = _families()[family]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # configs' notes on token ids of a tiny vocabulary
        return build().eval(), inputs


def _q_or_k(group) -> bool:
    return all(".q_proj." in t or ".k_proj." in t for t in group.tensors)


@pytest.mark.parametrize("family", FAMILIES)
def test_hugging_face_models_are_captured_by_export_and_keep_their_function(family):
    model, inputs = _build(family)
    spec = discover(model, inputs)
    assert spec.capture == "export"
    permutable, hidden = spec.units()
    # rotary embeddings (llama, qwen2) hold every q/k dim within its head: 48 of 160 units a layer
    rotary = [g for g in spec.groups.values() if g.hidden and not g.permutable and _q_or_k(g)]
    assert permutable + sum(g.layer_units for g in rotary) > 0.8 * hidden, str(spec)
    with torch.no_grad():
        y = model(**inputs).logits
        for seed in (0, 1, 2):
            permuted = permute(model, spec, spec.random_permutation(seed))
            moved = any(not torch.equal(v, model.state_dict()[k]) for k, v in permuted.state_dict().items())
            assert moved
            torch.testing.assert_close(permuted(**inputs).logits, y, rtol=1e-4, atol=1e-5)


def test_t5_relative_position_biases_move_with_the_heads_of_every_layer_that_adds_them():
    """T5 computes one bias per head from relative positions in its first layer (an embedding
    table looked up by bucket) and passes it to every layer's attention as its mask: the heads
    of all those layers move together, with the table's columns. Cross-attention adds a zero
    bias plus the padding mask, which holds its heads in place (soundly)."""
    model, inputs = _build("t5")
    spec = discover(model, inputs)
    free = [h for h in spec.heads if h.permutable]
    assert len(free) == 2, str(spec)  # encoder self-attention, decoder self-attention
    for h, stack in zip(free, ("encoder", "decoder")):
        tensors = {s.tensor for s in h.slices}
        assert f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in tensors
        assert {f"{stack}.block.{i}.layer.0.SelfAttention.q.weight" for i in (0, 1)} <= tensors, tensors
    assert all("EncDecAttention" in h.name for h in spec.heads if not h.permutable)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_rotary_embeddings_fix_the_query_and_key_dimensions_only(family):
    """Rotary embeddings rotate pairs of q/k dims by position: those dims are fixed (the tables
    of cos and sin are not permuted with them); values, outputs and the MLP stay free."""
    model, inputs = _build(family)
    spec = discover(model, inputs)
    fixed = [g for g in spec.fixed if g.hidden]
    assert fixed and all(".q_proj." in g.name or ".k_proj." in g.name for g in fixed), str(spec)
    assert all("aten.mul" in g.reason for g in fixed)
    free = {g.name for g in spec.permutable}
    assert any("v_proj" in n for n in free) and any("gate_proj" in n or "up_proj" in n for n in free), free


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "vit", "llama_mha"])
def test_heads_of_hugging_face_models_move_as_blocks_each_with_its_own_dims(family):
    model, inputs = _build(family)
    spec = discover(model, inputs)
    assert len(spec.heads) == 2 and all(h.permutable and h.size == 4 for h in spec.heads), str(spec)
    # each head's q·k and v·o dims are groups of their own (8 per layer; the whole MLP and
    # residual stream besides)
    per_head = [g for g in spec.permutable if g.size == 8 and g.kind == "units"]
    assert len(per_head) >= (8 if family == "llama_mha" else 16), str(spec)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_key_value_heads_move_with_the_query_heads_that_share_them(family):
    """Two key/value heads, each shared by two query heads: the key/value heads move as blocks
    holding their two query heads' rows of q_proj and columns of o_proj; the query heads keep
    their order within their group (with the reason)."""
    model, inputs = _build(family)
    spec = discover(model, inputs)
    kv = [h for h in spec.heads if h.permutable]
    query = [h for h in spec.heads if not h.permutable]
    assert len(kv) == 2 and all(h.size == 2 for h in kv), str(spec)
    assert len(query) == 2 and all(SHARED_KV in h.reason for h in query), str(spec)
    head_dim = 32 // 4
    blocks = {(s.tensor.split(".")[-2], s.axis): s.inner for s in kv[0].slices if s.tensor.endswith("weight")}
    assert blocks == {
        ("q_proj", 0): 2 * head_dim,
        ("k_proj", 0): head_dim,
        ("v_proj", 0): head_dim,
        ("o_proj", 1): 2 * head_dim,
    }, blocks
    # each value head's dims are its own (rotary embeddings fix the q and k dims)
    values = [g for g in spec.permutable if ".v_proj." in g.name]
    assert len(values) == 4 and all(g.size == head_dim for g in values), str(spec)
    with torch.no_grad():
        y = model(**inputs).logits
        perms = spec.identity()
        perms.update({h.name: torch.tensor([1, 0]) for h in kv})  # only the heads move
        torch.testing.assert_close(permute(model, spec, perms)(**inputs).logits, y, rtol=1e-4, atol=1e-5)


def _batch(family: str, n: int, seed: int = 1) -> dict:
    """A batch of ``n`` of the family's inputs, with labels (next tokens for causal LMs)."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":  # the label says which half of the image is brighter
        x = torch.randn(n, 3, 16, 16, generator=g)
        return {"pixel_values": x, "labels": (x[..., :8].mean((1, 2, 3)) > x[..., 8:].mean((1, 2, 3))).long()}
    ids = torch.randint(0, 100, (n, 8), generator=g)
    if family == "t5":  # the decoder reads the labels' tokens (teacher forcing)
        return {"input_ids": ids, "decoder_input_ids": ids.flip(1), "labels": ids.flip(1)}
    causal = family in ("gpt2", "llama", "llama_mha", "qwen2")
    labels = ids if causal else (ids[:, 0] < 50).long()  # classifiers: is the first token small
    return {"input_ids": ids, "attention_mask": torch.ones(n, 8, dtype=torch.long), "labels": labels}


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("family", [*FAMILIES, "llama_mha"])
@pytest.mark.parametrize("cost", COSTS)
def test_align_recovers_a_planted_permutation_of_a_hugging_face_model(family, cost):
    a, _ = _build(family)
    data = [_inputs(_batch(family, 32))]
    spec = discover(a, {k: v[:2] for k, v in data[0].items()})
    planted = spec.random_permutation(5)
    b = permute(a, spec, planted)
    result = align(a, b, None if cost == "weight_matching" else data, cost=cost, spec=spec)
    assert not _recovered(a, result.model)
    for h in spec.heads:  # the heads moved and came back
        if h.permutable:
            assert not torch.equal(planted[h.name], torch.arange(h.size))
            assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name]))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_curve_fits_between_two_hugging_face_models_of_a_family(family):
    """Two models from different seeds, aligned; a Bezier curve between them fits for a few
    steps: its bend moves, its loss stays finite, and its ends are the two models. (At random
    init the end points sit at chance on these batches, so a few steps need not lower the
    loss in the middle; test_transformers.py trains two language models first.)"""
    a, inputs = _build(family, seed=0)
    b, _ = _build(family, seed=1)
    data = [_batch(family, 16, seed=s) for s in range(2)]
    aligned = align(a, b, [_inputs(d) for d in data], spec=discover(a, inputs)).model
    curve = modeconn.Curve(a, aligned, "bezier", num_bends=1)
    bend = curve.bends.detach().clone()
    history = modeconn.fit_curve(curve, data, epochs=2, lr=0.01, batch_size=16, progress=False)
    assert len(history) == 2 and all(math.isfinite(r.loss) for r in history)
    assert not torch.allclose(curve.bends.detach(), bend)
    report = modeconn.evaluate_curve(curve, data, num_points=3)
    assert all(math.isfinite(x) for x in report.loss)
    assert report.loss[0] == pytest.approx(modeconn.evaluate(a, data)[0], rel=1e-5)
    assert report.loss[-1] == pytest.approx(modeconn.evaluate(aligned, data)[0], rel=1e-5)


def test_align_names_the_mistake_when_its_batches_lack_inputs_discover_was_given():
    """A spec discovered with an attention mask names nodes of the graph with a mask; batches
    without one capture another graph, and align says so instead of failing inside a site."""
    a, inputs = _build("llama")
    spec = discover(a, inputs)
    data = [{"input_ids": torch.randint(0, 100, (8, 8))}]
    with pytest.raises(modeconn.AlignmentError, match="the spec was discovered on other inputs"):
        align(a, permute(a, spec, spec.random_permutation(0)), data, spec=spec)


def test_align_takes_batches_of_other_sequence_lengths_through_the_exported_graph():
    """Token inputs are captured with their length dynamic, as data loaders pad per batch."""
    a, _ = _build("bert")
    spec = discover(a, {"input_ids": torch.randint(0, 100, (2, 8))})
    b = permute(a, spec, spec.random_permutation(2))
    torch.manual_seed(3)
    data = [{"input_ids": torch.randint(0, 100, (16, n))} for n in (8, 12, 5)]
    assert not _recovered(a, align(a, b, data, spec=spec).model)


def test_align_names_the_shapes_an_exported_graph_refuses(nets):
    """Images keep the size they were captured at: another size is refused, with the remedy."""
    ctor, shape = nets.NETS["residual"]
    a, b = ctor().eval(), ctor().eval()
    spec = discover(a, torch.randn(2, *shape), capture="export")
    smaller = torch.randn(4, shape[0], shape[1] - 2, shape[2] - 2)
    with pytest.raises(modeconn.AlignmentError, match=r"torch.export captured for .*the same shapes"):
        align(a, b, [torch.randn(4, *shape), smaller], spec=spec)
