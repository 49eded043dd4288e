"""``modeconn.symmetry.discovery``'s own machinery: what ``discover`` takes as example inputs,
the graphs it reads (``trace_model``, both modes), and what it does around the rules: the
train-mode pass, batches of one, unused tensors, rule lookup for subclasses, rules that
break, and its errors. (The groups found on the fixture nets are test_discover.py's.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modeconn
from modeconn import align, discover, permute
from modeconn.capture import model_inputs
from modeconn.errors import SymmetryError, TraceError, UnsupportedOpError
from modeconn.symmetry.discovery import trace_model


class _Lookup(nn.Module):
    """Integer token ids, and an optional floating keyword input."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids, scale=None):
        h = self.emb(ids)
        if scale is not None:
            h = h * scale
        return self.out(h)


class _WithAux(nn.Module):
    """An auxiliary head used in train mode only, and a layer forward never uses."""

    def __init__(self):
        super().__init__()
        self.hidden, self.bn = nn.Linear(4, 6), nn.BatchNorm1d(6)
        self.head, self.aux = nn.Linear(6, 2), nn.Linear(6, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        h = F.relu(self.bn(self.hidden(x)))
        if self.training:
            return self.head(h), self.aux(h)
        return self.head(h)


def test_discover_casts_floating_inputs_to_the_model_dtype_and_keeps_integer_ones():
    mlp = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    spec = discover(mlp, torch.randn(2, 3))  # float32 inputs to a float64 model
    assert spec["0"].permutable and spec["0"].size == 5
    lookup = _Lookup().double()
    # a dict in any key order; token ids stay integers (an embedding refuses floats)
    spec = discover(lookup, {"scale": torch.ones(1), "ids": torch.tensor([[1, 2]])})
    assert spec["emb"].permutable and "out.weight" in spec["emb"].tensors
    assert not spec["emb.rows"].permutable  # rows looked up by the integer inputs


def test_a_timm_model_needs_no_example_inputs():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model.pretrained_cfg = {"input_size": (3,)}  # what timm models say of their inputs
    assert discover(model)["0"].permutable
    del model.pretrained_cfg
    with pytest.raises(SymmetryError, match=r"discover needs example_inputs for Sequential.*torch\.randn"):
        discover(model)


def test_example_inputs_that_do_not_fit_forward_are_refused_with_the_reason():
    with pytest.raises(SymmetryError, match="example_inputs is empty"):
        discover(nn.Linear(2, 2), ())
    with pytest.raises(SymmetryError, match="example_inputs must be a tensor, .* not str"):
        discover(nn.Linear(2, 2), "x")
    with pytest.raises(TraceError, match=r"_Lookup.forward has no parameter 'idz' \(it takes ids, scale\)"):
        discover(_Lookup(), {"idz": torch.tensor([[1]])})
    with pytest.raises(TraceError, match="takes 1 positional input"):
        discover(nn.Linear(2, 2), (torch.randn(1, 2), torch.randn(1, 2)))


def test_trace_model_captures_each_mode_and_restores_the_models():
    model = _WithAux()
    inputs = model_inputs(model, torch.randn(2, 4))
    model.train()
    model.bn.eval()  # mixed modes survive tracing
    evaluated = trace_model(model, inputs)
    trained = trace_model(model, inputs, training=True)
    assert model.training and not model.bn.training
    eval_nodes = [n.name for n in evaluated.graph.nodes]
    train_nodes = [n.name for n in trained.graph.nodes]
    assert "aux" not in eval_nodes and "aux" in train_nodes
    # the eval graph is the one a spec's sites name
    spec = discover(model, torch.randn(2, 4))
    assert {s.node for g in spec for s in g.sites} <= set(eval_nodes)
    x = torch.randn(5, 4)
    model.eval()
    with torch.no_grad():  # the captured graph computes the model's eval-mode function
        assert torch.equal(evaluated(x), model(x))


def test_the_train_mode_pass_covers_training_only_heads_and_unused_tensors_are_listed():
    model = _WithAux()
    spec = discover(model, torch.randn(2, 4))
    assert spec.capture == "fx"
    hidden = spec["hidden"]
    assert hidden.permutable and hidden.size == 6
    assert {"hidden.weight", "bn.running_mean", "head.weight", "aux.weight"} <= set(hidden.tensors)
    assert not spec["aux"].permutable and spec["aux"].reason == "model output"
    assert set(spec.unreached) == {"unused.weight", "unused.bias"}
    assert "never permuted" in spec.unreached["unused.weight"]
    x = torch.randn(6, 4)
    with torch.no_grad():
        model.train()
        before = model(x)
        after = permute(model, spec, spec.random_permutation(0)).train()(x)
    for y, yp in zip(before, after):  # the auxiliary head's outputs too
        torch.testing.assert_close(y, yp)


def test_a_batch_of_one_is_enough_with_batchnorm():
    """Train-mode BatchNorm refuses one sample: discovery repeats it to a batch of two."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    one, two = discover(model, torch.randn(1, 3)), discover(model, torch.randn(2, 3))
    assert [(g.name, g.size, g.permutable, g.slices) for g in one] == [
        (g.name, g.size, g.permutable, g.slices) for g in two
    ]
    assert one["0"].permutable and "1.running_var" in one["0"].tensors
    assert model.training


def test_a_subclass_reuses_its_bases_rule_only_if_it_computes_the_same():
    class Labelled(nn.Conv2d):  # redefines nothing forward runs
        def extra_repr(self):
            return "labelled"

    class Flipping(nn.Conv2d):  # its forward reverses the channels
        def forward(self, x):
            return super().forward(x).flip(1)

    x = torch.randn(2, 3, 4, 4)
    same = discover(nn.Sequential(Labelled(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)), x)
    assert same["0"].permutable and {"0.weight", "0.bias", "2.weight"} <= set(same["0"].tensors)
    net = nn.Sequential(Flipping(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    spec = discover(net, x)
    assert not any(g.permutable for g in spec)
    assert any("flip" in (g.reason or "") for g in spec)
    with torch.no_grad():  # what is fixed keeps the function
        assert torch.equal(permute(net, spec, spec.random_permutation(0))(x), net(x))


def test_a_rule_that_describes_its_output_wrongly_fixes_the_groups_with_the_reason(fresh_plugins):
    class Shift(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.offset = nn.Parameter(torch.randn(c))

        def forward(self, x):
            return x + self.offset[:, None, None]

    def wrong_rule(ctx):
        return None  # a tensor described as a constant would hide the permutation it carries

    class Rules:
        @modeconn.plugin.hookimpl
        def modeconn_register_rules(self, registry):
            registry.add(Shift, wrong_rule)

    modeconn.register_plugin(Rules(), name="wrong_rules")
    net = nn.Sequential(nn.Conv2d(3, 6, 1), Shift(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    x = torch.randn(2, 3, 4, 4)
    spec = discover(net, x, capture="fx")
    assert not spec["0"].permutable
    assert (
        "its rule failed (SymmetryError: the rule returned NoneType for a tensor of shape (2, 6, 4, 4))"
        in (spec["0"].reason)
    )
    with torch.no_grad():
        assert torch.equal(permute(net, spec, spec.random_permutation(1))(x), net(x))
    with pytest.raises(UnsupportedOpError, match=r"strict discovery: .*the rule returned NoneType"):
        discover(net, x, capture="fx", strict=True)


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.logcumsumexp(self.a(x), dim=1))


def test_discover_errors_say_what_to_do():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(SymmetryError, match="capture must be one of auto, fx, export, got 'jit'"):
        discover(model, torch.randn(2, 3), capture="jit")
    remedy = r"strict discovery: no permutation rule: .*torch\.logcumsumexp.*modeconn_register_rules hook.*strict=False"
    with pytest.raises(UnsupportedOpError, match=remedy):
        discover(_Cumsum(), torch.randn(2, 3), strict=True)
    lenient = discover(_Cumsum(), torch.randn(2, 3))  # not strict: the group is fixed, with the reason
    assert not lenient["a"].permutable and "torch.logcumsumexp" in lenient["a"].reason


# -- auto capture: export where fx keeps whole what no rule knows ------------------------------


class _Encoder(nn.Module):
    """A stock nn.TransformerEncoder between two layers: fx keeps it whole (a torch.nn module
    no rule knows), torch.export records its ops."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 3)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x):
        return self.out(self.enc(torch.relu(self.inp(x))))


def _recovered(a: nn.Module, aligned: nn.Module) -> list[str]:
    got = aligned.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, got[k])]


def test_auto_capture_takes_exports_graph_where_fx_keeps_a_block_no_rule_knows(check):
    torch.manual_seed(0)
    a, x = _Encoder().eval(), torch.randn(64, 5, 8)
    by_fx = discover(a, x[:2], capture="fx")
    assert "TransformerEncoder 'enc' at node 'enc': no permutation rule" in by_fx["inp"].reason
    spec = discover(a, x[:2])
    assert spec.capture == "export"
    assert spec.units() == discover(a, x[:2], capture="export").units()
    assert spec.units()[0] > by_fx.units()[0] == 0, str(spec)
    check.assert_equivalent(a, x[:4], seeds=(0, 1, 2), spec=spec)
    b = permute(a, spec, spec.random_permutation(3))
    assert _recovered(a, b)
    for cost in ("weight_matching", "correlation"):
        result = align(a, b, None if cost == "weight_matching" else [x], cost=cost, spec=spec)
        assert not _recovered(a, result.model), cost
    # strict: fx's graph has an op no rule knows, export's has none
    assert discover(a, x[:2], strict=True).capture == "export"
    with pytest.raises(UnsupportedOpError, match="TransformerEncoder|enc"):
        discover(a, x[:2], capture="fx", strict=True)


def test_auto_capture_takes_exports_graph_where_a_block_kept_whole_reads_the_inputs(check):
    """The encoder takes the model's inputs and feeds its output: no group of hidden units fx
    sees is held (fx's spec has none), yet the encoder's weights hide units; export's graph
    frees them."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    a = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)).eval()
    x = torch.randn(64, 5, 16)
    assert discover(a, x[:2], capture="fx").units() == (0, 0)
    spec = discover(a, x[:2])
    assert spec.capture == "export" and spec.units()[0] > 0, str(spec)
    check.assert_equivalent(a, x[:4], seeds=(0, 1), spec=spec)
    b = permute(a, spec, spec.random_permutation(1))
    assert _recovered(a, b)
    assert not _recovered(a, align(a, b, cost="weight_matching", spec=spec).model)


def _sign_of_sum(h):
    return h if float(h.sum()) > 0 else -h  # branches on the data: torch.export cannot capture it


torch.fx.wrap("_sign_of_sum")  # fx records the call whole, and no rule knows it


class _Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(_sign_of_sum(self.a(x)))


class _OpaqueEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

    def forward(self, x):
        return _sign_of_sum(self.enc(x))


def test_auto_capture_names_the_weights_inside_a_block_kept_whole_where_export_fails():
    spec = discover(_OpaqueEncoder().eval(), torch.randn(2, 5, 8))
    assert spec.capture == "fx" and spec.units() == (0, 0)
    reason = spec.unreached["enc.layers.0.linear1.weight"]
    assert "inside TransformerEncoder 'enc', which fx keeps whole and no rule knows" in reason
    assert "auto capture tried torch.export instead, which failed" in reason
    assert "(unreached) enc.layers.0.self_attn.in_proj_weight: inside TransformerEncoder" in str(spec)


def test_auto_capture_keeps_fx_and_says_why_where_export_fails_or_frees_no_more():
    spec = discover(_Opaque(), torch.randn(2, 3))
    assert spec.capture == "fx" and not spec["a"].permutable
    assert "_sign_of_sum at node '_sign_of_sum': no permutation rule: auto capture tried torch.export" in (
        spec["a"].reason
    )
    assert "which failed (torch.export could not capture _Opaque" in spec["a"].reason
    assert [op.rsplit(".", 1)[-1] for op in spec.fixed_ops()] == ["_sign_of_sum"]
    # export captures _Cumsum, but its aten.logcumsumexp frees nothing more: fx's spec, as it was
    spec = discover(_Cumsum(), torch.randn(2, 3))
    assert spec.capture == "fx"
    assert spec["a"].reason == "torch.logcumsumexp at node 'logcumsumexp': no permutation rule"
