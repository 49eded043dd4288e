import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import modeconn
from modeconn import discover, permute


def test_fixture_nets_keep_their_function(net, check):
    model, x = net
    check.assert_equivalent(model, x, seeds=(0, 1, 2))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    which=st.sampled_from(["residual", "concat", "attention", "sliced", "depthwise_se"]),
)
def test_any_permutation_keeps_the_function(seed, which, nets, check):
    """The law: for every permutation of every group, permute() preserves the outputs."""
    ctor, shape = nets.NETS[which]
    torch.manual_seed(0)
    model = check.randomize(ctor().double()).eval()
    x = torch.randn(3, *shape, dtype=torch.double)
    spec = discover(model, x)
    with torch.no_grad():
        y = model(x)
        yp = permute(model, spec, spec.random_permutation(seed))(x)
    assert torch.allclose(y, yp, atol=1e-10, rtol=1e-9)


def test_residual_stage_is_one_group(nets):
    spec = discover(nets.Residual(), torch.randn(2, 3, 8, 8))
    stream = spec["stem"]
    assert stream.permutable and stream.size == 8
    assert {"stem.weight", "bn.weight", "bn.running_mean", "c2.weight", "c4.weight", "fc.weight"} <= set(
        stream.tensors
    )
    assert spec["c1"].permutable and spec["c3"].permutable
    assert {s.kind for s in stream.sites} == {"pre", "post"}


@pytest.mark.parametrize("act, kinds", [("relu", {"post"}), (None, {"pre", "post"})])
def test_a_norm_fused_with_an_activation_is_observed_after_it(act, kinds):
    """timm's BatchNormAct2d returns the activation's output: l2_preact must not read it as a
    pre-activation, unless the activation is the identity (a linear bottleneck)."""
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=act), nn.Conv2d(4, 2, 1))
    spec = discover(model.eval(), torch.randn(2, 3, 4, 4))
    [group] = [g for g in spec.permutable if g.size == 4]
    assert {s.kind for s in group.sites if s.node == "_1"} == kinds
    assert {s.kind for s in group.sites if s.node == "_0"} == {"pre"}


def test_concat_is_a_direct_sum(nets, check):
    model = check.randomize(nets.Concat().double())
    spec = discover(model, torch.randn(2, 3, 8, 8, dtype=torch.double))
    assert spec["a"].size == 4 and spec["b"].size == 6
    bn = [s for s in spec["b"].slices if s.tensor == "bn.weight"]
    assert bn == [modeconn.symmetry.TensorSlice("bn.weight", 0, 4, 1)]
    post = {s.start for s in spec["a"].slices if s.tensor == "post.weight"}
    assert post == {6}  # after the reorder, branch a sits behind branch b


def test_flatten_linear_is_channel_major(nets):
    spec = discover(nets.FlattenLinear(), torch.randn(2, 3, 8, 8))
    (sl,) = [s for s in spec["conv"].slices if s.tensor == "fc1.weight"]
    assert (sl.axis, sl.start, sl.inner) == (1, 0, 16)


def test_grouped_conv_and_group_norm_restrict(nets):
    spec = discover(nets.GroupedNorms(), torch.randn(2, 3, 8, 8))
    # GroupNorm(2, 8) splits c1's 8 units at 4; the 4-group conv then ties its input groups,
    # so c1 keeps one permutation of 2 units, applied inside each of the 4 groups
    (c1,) = [g for g in spec.permutable if g.name.startswith("c1")]
    assert c1.size == 2
    assert sorted(s.start for s in c1.slices if s.tensor == "c1.weight") == [0, 2, 4, 6]
    outs = [g for g in spec.permutable if g.name.startswith("grouped")]
    assert outs and all(g.size == 3 for g in outs)


def test_attention_internals(nets):
    spec = discover(nets.Attention(), torch.randn(2, 5, 5))
    assert spec["embed"].permutable  # the residual stream
    assert spec["fc1"].permutable  # MLP hidden units
    heads = [g for g in spec.permutable if g.name.startswith("qkv")]
    assert heads and heads[0].size == 4  # head dim shared by q, k, v of every head
    mha = discover(nets.TorchMHA(), torch.randn(2, 5, 4))
    # per head: one permutation for q and k rows, one for v rows and out_proj columns
    # (the attention output joins the residual stream `embed`); the two heads move as blocks
    assert {g.name: g.size for g in mha.permutable} == {
        "embed": 8,
        "attn.qk0": 4,
        "attn.qk1": 4,
        "attn.v0": 4,
        "attn.v1": 4,
        "attn:heads": 2,
    }
    blocks = {(s.tensor, s.axis, s.start, s.inner) for s in mha["attn:heads"].slices}
    assert ("attn.in_proj_weight", 0, 16, 4) in blocks and ("attn.out_proj.weight", 1, 0, 4) in blocks
    qk0 = {(s.tensor, s.axis, s.start) for s in mha["attn.qk0"].slices}
    assert qk0 == {
        ("attn.in_proj_weight", 0, 0),
        ("attn.in_proj_weight", 0, 8),
        ("attn.in_proj_bias", 0, 0),
        ("attn.in_proj_bias", 0, 8),
    }
    v1 = {(s.tensor, s.axis, s.start) for s in mha["attn.v1"].slices}
    assert ("attn.out_proj.weight", 1, 4) in v1 and ("attn.in_proj_weight", 0, 20) in v1


def test_outputs_and_inputs_never_permuted(nets):
    spec = discover(nets.Residual(), torch.randn(2, 3, 8, 8))
    assert not spec["fc"].permutable and spec["fc"].reason == "model output"
    assert all(not (s.tensor == "stem.weight" and s.axis == 1) for g in spec for s in g.slices)


def test_unsupported_op_fixes_with_reason_and_strict_raises():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.other = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 5, 3)
            self.head = nn.Linear(13, 2)

        def forward(self, x):
            h = torch.logcumsumexp(self.conv(x), dim=1)
            return self.head(torch.cat([h, self.other(x)], 1).mean((2, 3)))

    model = Cumulative().eval()
    x = torch.randn(2, 3, 8, 8)
    spec = discover(model, x)
    assert not spec["conv"].permutable
    assert spec["conv"].reason == "torch.logcumsumexp at node 'logcumsumexp': no permutation rule"
    assert [(f.kind, f.op) for f in spec["conv"].fixes] == [("unsupported", "torch.logcumsumexp")]
    assert spec.fixed_units() == {"unsupported": 8} and spec.fixed_ops() == {"torch.logcumsumexp": 8}
    assert spec["other"].permutable  # untouched by the unknown op
    with torch.no_grad():
        assert torch.allclose(model(x), permute(model, spec, spec.random_permutation(0))(x), atol=1e-5)
    with pytest.raises(modeconn.UnsupportedOpError, match=r"torch\.logcumsumexp"):
        discover(model, x, strict=True)


def test_module_without_rule_is_fixed():
    """nn.Unfold is a torch.nn leaf with no rule: the conv before it is fixed, naming it."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Unfold(2), nn.Flatten(), nn.Linear(4 * 4 * 9, 2))
    spec = discover(model, torch.randn(2, 3, 4, 4))
    assert not spec["0"].permutable
    assert spec["0"].reason == "Unfold '1' at node '_1': no permutation rule"


def test_untraceable_model_names_the_module():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return -self.conv(x)

    # a submodule fx cannot trace into is kept whole, and fixes what it touches
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Branchy())
    spec = discover(model, torch.randn(2, 3, 4, 4))
    assert not spec["0"].permutable
    assert spec["0"].reason.startswith("Branchy '1' at node '_1': torch.fx cannot trace its code (TraceError")
    with pytest.raises(modeconn.UnsupportedOpError, match=r"torch.fx cannot trace its code"):
        discover(model, torch.randn(2, 3, 4, 4), strict=True)
    # a failure in the model's own forward is an error that names it
    with pytest.raises(modeconn.TraceError, match=r"it broke in the model's own forward[\s\S]*remedies"):
        discover(Branchy(), torch.randn(2, 3, 4, 4))


def test_example_inputs_required_unless_timm_says():
    with pytest.raises(modeconn.SymmetryError, match="example_inputs"):
        discover(nn.Linear(2, 2))
    with pytest.raises(modeconn.SymmetryError, match="example_inputs must be a tensor"):
        discover(nn.Linear(2, 2), 3.0)


def test_model_left_unchanged(nets, check):
    model = check.randomize(nets.Residual())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.bn.eval()  # mixed modes, as when BatchNorm is frozen during fine-tuning
    discover(model, torch.randn(2, 3, 8, 8))
    assert model.training and not model.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_custom_rule_through_plugin_hook(fresh_plugins):
    class Shift(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.offset = nn.Parameter(torch.randn(c))

        def forward(self, x):
            if x.dim() != 4:  # untraceable without a rule
                raise ValueError
            return x + self.offset[:, None, None]

    def shift_rule(ctx):
        x = ctx.tensor(0)
        ctx.bind_local("offset", 0, x[1])
        return ctx.out(x.layouts)

    class Rules:
        @modeconn.plugin.hookimpl
        def modeconn_register_rules(self, registry):
            registry.add(Shift, shift_rule)

    net = nn.Sequential(nn.Conv2d(3, 6, 1), Shift(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    x = torch.randn(2, 3, 4, 4)
    before = discover(
        net, x, capture="fx"
    )  # without a rule fx cannot trace Shift: kept whole, it fixes its input
    assert not before["0"].permutable and "torch.fx cannot trace its code" in before["0"].reason
    modeconn.register_plugin(Rules(), name="shift_rules")
    spec = discover(net, x, capture="fx")
    assert spec["0"].permutable and "1.offset" in spec["0"].tensors
    with torch.no_grad():
        assert torch.allclose(net(x), permute(net, spec, spec.random_permutation(3))(x), atol=1e-6)


def test_timm_same_padding_convolutions(check):
    from timm.layers import Conv2dSame, ScaledStdConv2dSame, StdConv2dSame

    net = nn.Sequential(  # 9x9 -> 5x5 -> 5x5 -> 3x3
        Conv2dSame(3, 6, 3, stride=2),
        nn.ReLU(),
        StdConv2dSame(6, 5, 3),
        nn.ReLU(),
        ScaledStdConv2dSame(5, 7, 3, stride=2),
        nn.Flatten(),
        nn.Linear(7 * 3 * 3, 2),
    )
    net = check.randomize(net.double())
    spec = check.assert_equivalent(net, torch.randn(4, 3, 9, 9, dtype=torch.double), seeds=(0, 1))
    assert [g.name for g in spec.permutable] == ["0", "2", "4"]
    assert "4.gain" in spec["4"].tensors


class _Shifted(nn.Module):
    """Each unit of fc1 meets its neighbour: no two units may swap."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h[:, 1:] - h[:, :-1])


class _Viewed(nn.Module):
    """fc1's 256 units viewed as 16 channels of 4x4 positions that a convolution mixes."""

    def __init__(self):
        super().__init__()
        self.fc1, self.conv = nn.Linear(4, 256), nn.Conv2d(16, 5, 3)

    def forward(self, x):
        return self.conv(torch.relu(self.fc1(x)).view(-1, 16, 4, 4)).flatten(1)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_fixed_group_counts_its_layers_units_and_names_the_op_that_fixed_it(capture):
    shifted = discover(nn.Sequential(_Shifted()).eval(), torch.randn(2, 4), capture=capture)
    (group,) = [g for g in shifted.groups.values() if g.hidden]
    assert shifted.units() == (0, 8) and group.layer_units == 8 and group.size == 1
    assert "sub at node 'sub' in `0`" in group.reason, group.reason  # the op, and the module it ran in
    assert "h[:, 1:] - h[:, :-1]" in group.reason, group.reason
    assert group.fixes[0].op.endswith("sub")
    viewed = discover(_Viewed().eval(), torch.randn(2, 4), capture=capture)
    assert viewed.units() == (0, 256), str(viewed)
    units = [g for g in viewed.groups.values() if g.hidden]
    assert len(units) == 1 and units[0].reason.count(units[0].fixes[0].op) == 1, units[0].reason  # named once
    # axes that are not hidden units are summed up, not listed as fixed groups
    lines = str(viewed).splitlines()
    assert sum("fixed:" in line for line in lines) == 2  # fc1's units, and its heads
    assert lines[-1].startswith("  never permuted, not hidden units: ") and "1 model output" in lines[-1]
