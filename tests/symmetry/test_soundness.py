"""Regression tests for the ways discovery was once silently wrong, or refused what users
pass, each written from its reproducer (issue 10)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modeconn
from modeconn import align, discover, permute


def _max_rel_diff(model, perms_model, *x) -> float:
    with torch.no_grad():
        y, yp = model(*x), perms_model(*x)
    return float((y - yp).abs().max() / y.abs().max())


def _recovers(a, b, spec, data, cost) -> bool:
    got = align(a, b, data, cost=cost, spec=spec).model.state_dict()
    return all(torch.equal(v, got[k]) for k, v in a.state_dict().items())


class Tied(nn.Module):
    """The issue's reproducer: an embedding tied to the output projection."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 10, bias=False)
        self.proj.weight = self.emb.weight
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.proj(self.emb(x)).mean(1))


def test_tied_embedding_and_projection(check):
    torch.manual_seed(0)
    model = check.randomize(Tied().double()).eval()
    x = torch.randint(0, 10, (8, 5))
    spec = discover(model, x, strict=True)
    # the projection's outputs are the embedding's rows: looked up by token ids, so fixed
    assert not spec["proj"].permutable
    assert "rows looked up by integer inputs (Embedding 'emb')" in spec["proj"].reason
    assert spec["emb"].permutable  # the embedding dimensions are free, on both uses of the tensor
    assert {(s.tensor, s.axis) for s in spec["emb"].slices} == {("emb.weight", 1), ("proj.weight", 1)}
    check.assert_equivalent(model, x, seeds=(0, 1, 2), spec=spec)
    b = permute(model, spec, spec.random_permutation(3))
    for cost in ("weight_matching", "correlation"):
        assert _recovers(model, b, spec, x, cost), cost


def test_tied_linear_layers_couple_their_inputs(check):
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)
            self.shared, self.other = nn.Linear(4, 5), nn.Linear(4, 5)
            self.other.weight = self.shared.weight
            self.head = nn.Linear(10, 2)

        def forward(self, x):
            return self.head(torch.cat([self.shared(self.a(x)), self.other(self.b(x))], 1))

    model = check.randomize(TwoUses().double()).eval()
    x = torch.randn(6, 3, dtype=torch.double)
    spec = check.assert_equivalent(model, x, seeds=(0, 1, 2))
    a_group = next(g for g in spec if "a.weight" in g.tensors)
    assert "b.weight" in a_group.tensors  # both inputs of the tied weight move together


def test_curve_through_a_tied_tensor():
    torch.manual_seed(0)
    a, b = Tied(), Tied()
    curve = modeconn.Curve(a, b).eval()  # eval mode used to raise "multiple values for tied keys"
    x = torch.randint(0, 10, (4, 5))
    for t in (0.0, 0.4, 1.0):
        model = curve.model_at(t)
        assert model.proj.weight is model.emb.weight
        with torch.no_grad():
            assert torch.equal(curve(x, t), model(x))
    with torch.no_grad():
        assert torch.equal(curve(x, 0.0), a(x)) and torch.equal(curve(x, 1.0), b(x))
    assert len(curve.param_names) == 3  # emb.weight once, head.weight, head.bias


@pytest.mark.parametrize("which", ["max", "min", "method_max"])
def test_elementwise_max_of_two_tensors(which, check):
    class MaxAB(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.h = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            u, v = self.a(x), self.b(x)
            y = {"max": torch.max, "min": torch.min}.get(which, lambda p, q: p.max(q))(u, v)
            return self.h(y)

    model = check.randomize(MaxAB().double()).eval()
    x = torch.randn(5, 4, dtype=torch.double)
    spec = check.assert_equivalent(model, x, seeds=(0, 1, 2))
    assert len(spec.permutable) == 1 and {"a.weight", "b.weight"} <= set(spec.permutable[0].tensors)


@pytest.mark.parametrize(
    "reduce",
    [
        lambda h: h.norm(2, 1),
        lambda h: h.var(2, True, False),
        lambda h: torch.norm(h, 2, 1),
        lambda h: h.std(2, True),
    ],
)
def test_positional_overloads_are_read_by_name(reduce, check):
    class Reduce(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.h = nn.Conv2d(3, 4, 1), nn.LazyLinear(2)

        def forward(self, x):
            return self.h(reduce(self.c(x)).flatten(1))

    model = Reduce().double()
    x = torch.randn(3, 3, 4, 4, dtype=torch.double)
    model(x)  # materializes the lazy head
    check.assert_equivalent(check.randomize(model), x, seeds=(0, 1), require_permutable=False)


def test_a_batch_of_one(check):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    spec = discover(model, torch.randn(1, 3, 6, 6))  # train-mode BatchNorm sees a batch of two
    assert spec["0"].permutable and "1.running_mean" in spec["0"].tensors


def test_inputs_are_cast_to_the_model_dtype():
    a = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6,)).double()
    b = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6,)).double()
    result = align(a, b, torch.randn(16, 1, 4, 4))  # float32 data for float64 models
    assert result.perms and discover(a, torch.randn(2, 1, 4, 4)).permutable


def test_a_shape_error_names_shapes_and_dtypes():
    model = nn.Linear(4, 2).double()
    with pytest.raises(
        modeconn.TraceError, match=r"given: input: \(2, 3\) float64; the model's parameters are torch.float64"
    ):
        discover(nn.Sequential(model), torch.randn(2, 3))


class TwoInputs(nn.Module):
    """Token ids and an attention mask, Hugging Face style."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        h = torch.relu(self.fc(self.emb(input_ids)))
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.head(h.mean(1))


def _token_batches(n=4, labels=True, form="dict"):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 20, (6, 5), generator=gen)
        mask = (torch.rand(6, 5, generator=gen) > 0.2).float()
        y = torch.randint(0, 3, (6,), generator=gen)
        if form == "dict":
            out.append({"input_ids": ids, "attention_mask": mask, **({"labels": y} if labels else {})})
        else:
            out.append((ids, mask, y) if labels else (ids, mask))
    return out


def test_several_inputs_and_dict_batches_everywhere(check):
    torch.manual_seed(0)
    a = check.randomize(TwoInputs())
    data = _token_batches()
    spec = discover(a, {"input_ids": data[0]["input_ids"], "attention_mask": data[0]["attention_mask"]})
    assert spec["fc"].permutable and spec["emb"].permutable
    as_tuple = discover(a, (data[0]["input_ids"], data[0]["attention_mask"]))
    assert {g.name: g.size for g in as_tuple} == {g.name: g.size for g in spec}
    b = permute(a, spec, spec.random_permutation(1))
    for batches, kw in (
        (data, {}),
        (_token_batches(form="tuple"), {}),
        (_token_batches(labels=False, form="tuple"), {"labels": False}),
    ):
        assert _recovers_kw(a, b, spec, batches, kw)
    history = modeconn.train_model(a, data, epochs=1, lr=0.01, progress=False)
    assert history[0].loss > 0
    loss, acc = modeconn.evaluate(a, _token_batches(form="tuple"))
    assert 0 <= acc <= 100 and loss > 0
    curve = modeconn.Curve(a, b)
    modeconn.fit_curve(curve, data, epochs=1, progress=False)
    report = modeconn.evaluate_curve(curve, data, bn_data=None, num_points=3)
    assert len(report.t) == 3


def _recovers_kw(a, b, spec, batches, kw) -> bool:
    got = align(a, b, batches, spec=spec, cost="correlation", **kw).model.state_dict()
    return all(torch.equal(v, got[k]) for k, v in a.state_dict().items())


def test_wrapped_models_are_looked_through():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    for wrapped in (nn.DataParallel(inner), torch.compile(inner)):
        spec = discover(wrapped, x)
        assert spec["0"].permutable
        permuted = permute(wrapped, spec, spec.random_permutation(0))
        assert isinstance(permuted, nn.Sequential) and _max_rel_diff(inner, permuted, x) < 1e-6
        recovered = align(wrapped, permuted, x).model.state_dict()
        assert all(torch.equal(v, recovered[k]) for k, v in inner.state_dict().items())
        assert modeconn.Curve(wrapped, permuted).param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def _decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def test_a_decorated_forward():
    class Decorated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)

        @_decorator
        def forward(self, x, mask=None, *, scale: float = 1.0, **kwargs):
            return self.b(torch.relu(self.a(x)) * scale)

    model = Decorated()
    spec = discover(model, torch.randn(2, 4))  # fx used to fail: "co_varnames is too small"
    assert spec["a"].permutable
    assert _max_rel_diff(model, permute(model, spec, spec.random_permutation(0)), torch.randn(3, 4)) < 1e-6


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 4)

    def forward(self, x):
        return self.l(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow, in the outer module
            return self.inner(x)
        return -self.inner(x)


def test_a_trace_failure_is_blamed_on_the_module_whose_code_broke():
    with pytest.raises(modeconn.TraceError, match=r"it broke in the model's own forward"):
        discover(Outer(), torch.randn(2, 4))
    model = nn.Sequential(nn.Linear(4, 4), Outer())
    spec = discover(model, torch.randn(2, 4))
    assert spec["0"].reason.startswith("Outer '1' at node '_1': torch.fx cannot trace its code")


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True),
        lambda: nn.LSTM(4, 6, proj_size=3, batch_first=True),
        lambda: nn.GRU(4, 5, num_layers=3, batch_first=True),
        lambda: nn.RNN(4, 5, nonlinearity="relu", batch_first=True),
    ],
    ids=["lstm-2-bi", "lstm-proj", "gru-3", "rnn"],
)
def test_recurrent_layers(make, check):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn = nn.Linear(3, 4), make()
            width = (
                self.rnn.proj_size or self.rnn.hidden_size
                if isinstance(self.rnn, nn.LSTM)
                else self.rnn.hidden_size
            )
            self.head = nn.Linear(width * (2 if self.rnn.bidirectional else 1), 2)

        def forward(self, x):
            return self.head(self.rnn(torch.tanh(self.inp(x)))[0][:, -1])

    torch.manual_seed(0)
    model = check.randomize(Net().double()).eval()
    x = torch.randn(6, 5, 3, dtype=torch.double)
    spec = check.assert_equivalent(model, x, seeds=(0, 1, 2))
    hidden = [g for g in spec.permutable if g.name.startswith("rnn.")]
    layers, dirs = model.rnn.num_layers, 2 if model.rnn.bidirectional else 1
    assert len(hidden) == layers * dirs * (2 if getattr(model.rnn, "proj_size", 0) else 1)
    b = permute(model, spec, spec.random_permutation(4))
    assert _recovers(model, b, spec, x, "weight_matching")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: torch.nn.utils.parametrizations.weight_norm(m),
        lambda m: torch.nn.utils.parametrizations.weight_norm(m, dim=None),
        lambda m: torch.nn.utils.parametrizations.spectral_norm(m),
    ],
    ids=["weight_norm", "weight_norm-dim-None", "spectral_norm"],
)
def test_parametrized_layers_are_followed(wrap, check):
    torch.manual_seed(0)
    model = nn.Sequential(
        wrap(nn.Conv2d(3, 5, 3)), nn.ReLU(), wrap(nn.Conv2d(5, 4, 1)), nn.ReLU(), nn.Flatten()
    )
    model.append(wrap(nn.Linear(4 * 6 * 6, 6))).append(nn.ReLU()).append(nn.Linear(6, 2))
    model = model.double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.double)
    spec = check.assert_equivalent(model, x, seeds=(0, 1, 2))
    assert [g.name for g in spec.permutable] == ["0", "2", "5"]


def test_an_unknown_parametrization_is_fixed_with_the_reason(check):
    class Double(nn.Module):
        def forward(self, w):
            return w.flip(0)  # reorders the rows: permuting them would not commute

    layer = nn.Linear(4, 5)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Double())
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(5, 2)).double()
    spec = discover(model, torch.randn(2, 4, dtype=torch.double))
    assert not spec["0"].permutable
    assert spec["0"].fixes[0].kind == "parametrization" and "Double" in spec["0"].reason
    check.assert_equivalent(model, torch.randn(3, 4, dtype=torch.double), require_permutable=False)


def test_the_old_hook_based_weight_norm():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 5)), nn.ReLU(), nn.Linear(5, 2)).double()

    x = torch.randn(3, 4, dtype=torch.double)
    model = build()
    spec = discover(model, x)
    assert spec["0"].permutable and {"0.weight_g", "0.weight_v"} <= set(spec["0"].tensors)
    model(x)  # a forward pass with gradients makes `weight` a computed tensor, which torch cannot copy
    with pytest.raises(modeconn.SymmetryError, match="parametrizations.weight_norm"):
        permute(model, spec, spec.random_permutation(0))
    permuted = permute(build(), spec, spec.random_permutation(0), inplace=True)
    assert not torch.equal(permuted[0].weight_v, model[0].weight_v)
    assert _max_rel_diff(model, permuted, x) < 1e-12


def test_forward_hooks_fix_the_layer(check):
    class Hooked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)
            self.a.register_forward_hook(lambda m, i, o: o.flip(-1))

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model = Hooked().double()
    spec = discover(model, torch.randn(2, 4, dtype=torch.double))
    assert not spec.permutable  # the hooked layer is unsupported: its units appear in no group
    with pytest.raises(
        modeconn.UnsupportedOpError, match=r"forward hooks \(.*<lambda>\) change what the module computes"
    ):
        discover(model, torch.randn(2, 4, dtype=torch.double), strict=True)
    check.assert_equivalent(model, torch.randn(3, 4, dtype=torch.double), require_permutable=False)


def test_a_subclass_that_overrides_a_helper_loses_its_base_rule(check):
    class Gain(nn.Conv2d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.gain = nn.Parameter(torch.rand(self.in_channels) + 0.5)

        def _conv_forward(self, input, weight, bias):
            return super()._conv_forward(input * self.gain[:, None, None], weight, bias)

    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), Gain(4, 5, 1), nn.ReLU(), nn.Flatten(), nn.Linear(80, 2)
    )
    model = check.randomize(model.double())
    spec = check.assert_equivalent(model, torch.randn(3, 3, 4, 4, dtype=torch.double), seeds=(0, 1, 2))
    assert "2.gain" in spec["0"].tensors  # traced through: the gain follows the input channels


def test_counting_leaves_token_axes_out(check):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    spec = discover(vit, torch.randn(1, 3, 32, 32))
    permutable, hidden = spec.units()
    assert permutable == hidden  # the position-embedding token axis is not counted as hidden units
    tokens = [g for g in spec.fixed if "pos_embed" in g.tensors and not g.hidden]
    assert tokens and tokens[0].fixes[0].kind in ("no_layer", "constraint")
    assert spec.fixed_units() == {}
    cnn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 2))
    assert discover(cnn, torch.randn(2, 3, 4, 4)).units() == (8, 8)  # the 2 output units are not hidden
    blocked = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.ReLU())
    blocked.append(type("Cum", (nn.Module,), {"forward": lambda self, x: torch.logcumsumexp(x, 1)})())
    blocked.append(nn.Flatten()).append(nn.Linear(6 * 16, 2))
    b_spec = discover(blocked, torch.randn(2, 3, 4, 4))
    assert b_spec.fixed_units() == {"unsupported": 6} and b_spec.fixed_ops() == {"torch.logcumsumexp": 6}
    assert b_spec.units() == (4, 10)


def test_strict_mode_raises_on_an_unsupported_call_form():
    class ViewDtype(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x).view(torch.int32).float())

    with pytest.raises(modeconn.UnsupportedOpError, match="a view as another dtype"):
        discover(ViewDtype(), torch.randn(2, 4), strict=True)
    spec = discover(ViewDtype(), torch.randn(2, 4))
    assert "a view as another dtype" in spec["a"].reason


def test_rules_never_raise_internal_errors_on_odd_forms():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            h = self.c(x)
            return F.softmax(h, dim=1).sum((2, 3)) + h.amax(dim=(2, 3)) + h.sum(axis=(2, 3), keepdims=False)

    spec = discover(Odd(), torch.randn(2, 3, 4, 4), strict=True)
    assert spec["c"].permutable is False and spec["c"].fixes[0].kind == "output"


# -- issue 32: a flat parameter viewed as a matrix whose rows are then folded ---------------------


class _ViewedRows(nn.Module):
    """A flat parameter ``w`` viewed as a (12, 6) linear weight, its 6 input channels fixed
    (scaled by distinct constants) and its 12 output rows folded by the layer after it."""

    def __init__(self, after: str):
        super().__init__()
        self.after = after
        self.pre = nn.Conv2d(3, 6, 1)
        self.w, self.b = nn.Parameter(0.5 * torch.randn(72)), nn.Parameter(torch.randn(12))
        self.gconv = nn.Conv2d(12, 12, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(2, 12)
        self.proj = nn.Linear(12, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        h = self.pre(x) * torch.arange(1.0, 7.0, dtype=x.dtype)[None, :, None, None]
        if self.after == "heads":  # the rows cut into 2 attention heads of 6
            t = F.linear(h.flatten(2).transpose(1, 2), self.w.view(12, 6), self.b)
            n, length, _ = t.shape
            q = t.view(n, length, 2, 6).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(n, length, 12)
            return self.fc(torch.tanh(self.proj(o)).mean(1))
        if self.after == "conv2d":  # the kernel of a convolution viewed from the flat parameter
            y = F.conv2d(h, self.w.view(12, 6, 1, 1), self.b)
        else:
            w = self.w.unflatten(0, (12, 6)) if self.after == "unflatten" else self.w.view(12, 6)
            y = F.linear(h.permute(0, 2, 3, 1), w, self.b).permute(0, 3, 1, 2)
        y = self.gn(y) if self.after == "groupnorm" else self.gconv(y)
        return self.fc(torch.tanh(y).mean((2, 3)))


@pytest.mark.parametrize("after", ["gconv", "groupnorm", "heads", "conv2d", "unflatten"])
def test_a_viewed_parameter_whose_rows_are_folded_keeps_its_function(after, check):
    """The issue's reproducer (``gconv``) and its siblings: the rows' permutation moves whole
    rows of ``w`` (blocks of 6 at stride 6); its fixed columns never move."""
    torch.manual_seed(0)
    model = check.randomize(_ViewedRows(after).double()).eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.double)
    spec = check.assert_equivalent(model, x, seeds=(0, 1, 2), require_permutable=False)
    check.assert_no_group_moves_fixed_units(spec)
    rows = [g for g in spec.permutable if "w" in g.tensors]
    columns = [g for g in spec if "w" in g.tensors and g.kind == "units"]
    assert all(not g.permutable for g in columns), "the linear's input axis is fixed"
    if after != "conv2d":
        assert rows, "the rows of w move"
        assert {s.inner for g in rows for s in g.slices if s.tensor == "w"} == {6}  # whole rows
        b = permute(model, spec, spec.random_permutation(3))
        for cost in ("weight_matching", "correlation"):
            assert _recovers(model, b, spec, x, cost), cost
    if after == "heads":  # heads whose units are the rows' heads: held, with the reason
        outer = next(g for g in spec if g.kind == "heads" and "w" not in g.tensors)
        assert not outer.permutable and "its heads hold other heads" in outer.reason
