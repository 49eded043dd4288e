"""Attention heads: per-head units and head permutations, found on generated attention nets;
heads that some op treats unalike are fixed, and the fix is needed (forcing it breaks the
function)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconn import align, discover, permute
from modeconn.symmetry.context import SHARED_KV
from modeconn.symmetry.spec import PermutationSpec

from .helpers import assert_equivalent

# ways of breaking the symmetry between heads, and the reason discovery gives
BREAKERS = {
    "flat_constant": "depends on the order of an axis holding several heads",
    "first_head": "holds the units of some heads only",
    "group_norm": "splits an axis holding several heads into groups",
    "head_bias": "never permuted",
    "mask_bias": "attention mask",  # the same slopes, as SDPA's attn_mask
    "head_scale": "never permuted",  # a constant of (heads, dims): every head scaled its own way
}


class Attention(nn.Module):
    def __init__(
        self,
        d: int,
        heads: int,
        dh: int,
        *,
        fused: bool | str = False,
        rope: bool = False,
        product: str = "sdpa",
        causal: bool = False,
        breaker: str | None = None,
        kv_heads: int | None = None,
        repeat: str = "expand",
        qk_norm: bool = False,
    ):
        super().__init__()
        self.h, self.dh, self.inner = heads, dh, heads * dh
        self.fused, self.rope, self.product, self.causal, self.breaker = fused, rope, product, causal, breaker
        # grouped-query attention: kv_heads key/value heads, each shared by heads // kv_heads
        # query heads, repeated for them as Hugging Face's repeat_kv does ("expand") or by
        # repeat_interleave
        self.kv, self.repeat = kv_heads or heads, repeat
        self.kv_inner = self.kv * dh
        if fused:
            self.qkv = nn.Linear(d, self.inner + 2 * self.kv_inner)
        else:
            self.q = nn.Linear(d, self.inner)
            self.k, self.v = (nn.Linear(d, self.kv_inner) for _ in range(2))
        self.o = nn.Linear(self.inner, d)
        if breaker == "group_norm":
            self.norm = nn.GroupNorm(2, self.inner)
        # Qwen3's and Gemma-3's q/k norms: one RMSNorm of `dh` for every head
        self.q_norm, self.k_norm = (nn.RMSNorm(dh) if qk_norm else nn.Identity() for _ in range(2))

    def _heads(
        self, x: torch.Tensor, heads: int | None = None, norm: nn.Module | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        x = x.view(b, t, heads or self.h, self.dh)
        return (x if norm is None else norm(x)).transpose(1, 2)

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        """Key/value heads, each repeated for the query heads that share it."""
        r = self.h // self.kv
        if r == 1:
            return x
        if self.repeat == "interleave":
            return x.repeat_interleave(r, 1)
        b, t = x.shape[0], x.shape[2]
        return x[:, :, None].expand(b, self.kv, r, t, self.dh).reshape(b, self.h, t, self.dh)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        t, dims = x.shape[-2], x.shape[-1]
        pos = torch.arange(t, dtype=x.dtype)[:, None]
        freq = torch.arange(dims // 2, dtype=x.dtype)[None] + 1.0
        angle = torch.cat([pos * freq, pos * freq], -1)
        x1, x2 = x[..., : dims // 2], x[..., dims // 2 :]
        return x * angle.cos() + torch.cat([-x2, x1], -1) * angle.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.fused == "reshape":  # timm's form: (3, heads, dims) in one view
            q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
            q, k, v = (z.transpose(1, 2).reshape(b, t, self.inner) for z in (q, k, v))
        elif self.fused:
            q, k, v = self.qkv(x).split([self.inner, self.kv_inner, self.kv_inner], -1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        extra = q[..., : self.dh].sum(-1, keepdim=True) if self.breaker == "first_head" else 0
        q, k, v = (
            self._heads(q, norm=self.q_norm),
            self._heads(k, self.kv, self.k_norm),
            self._heads(v, self.kv),
        )
        if self.breaker == "head_scale":
            q = q * torch.linspace(0.5, 1.5, self.inner, dtype=x.dtype).view(self.h, 1, self.dh)
        if self.rope == "partial":  # Phi's and GPT-NeoX's: the first half of each head's dims
            r = self.dh // 2
            q, k = (torch.cat([self._rotate(z[..., :r]), z[..., r:]], -1) for z in (q, k))
        elif self.rope:
            q, k = self._rotate(q), self._rotate(k)
        k, v = self._shared(k), self._shared(v)
        if self.breaker == "mask_bias":
            slopes = torch.arange(1, self.h + 1, dtype=x.dtype).view(1, -1, 1, 1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=slopes * torch.arange(t, dtype=x.dtype))
        elif self.product == "sdpa" and self.breaker != "head_bias":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
            if self.breaker == "head_bias":  # ALiBi: a slope per head times the key position
                slopes = torch.arange(1, self.h + 1, dtype=x.dtype).view(1, -1, 1, 1)
                scores = scores + slopes * torch.arange(t, dtype=x.dtype)
            if self.causal:
                scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            y = scores.softmax(-1) @ v
        y = y.transpose(1, 2).reshape(b, t, self.inner)
        if self.breaker == "flat_constant":
            y = y + torch.linspace(-1, 1, self.inner, dtype=x.dtype)
        if self.breaker == "group_norm":
            y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return self.o(y) + extra


class Net(nn.Module):
    def __init__(self, d_in: int = 5, d: int = 8, layers: int = 1, **attention):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(Attention(d, **attention) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.mlp = nn.Sequential(nn.Linear(d, 12), nn.GELU(), nn.Linear(12, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for attn, norm in zip(self.blocks, self.norms):
            h = h + attn(norm(h))
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def _x(batch: int = 2, tokens: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, tokens, 5, generator=torch.Generator().manual_seed(seed))


def _units_inside(spec: PermutationSpec, head_group) -> set[str]:
    """The groups owning units inside the heads of ``head_group`` (one per head and family
    when heads are independent)."""
    out = set()
    for g in spec:
        if g.kind == "heads":
            continue
        for s in g.slices:
            for b in head_group.slices:
                if (b.tensor, b.axis) == (
                    s.tensor,
                    s.axis,
                ) and b.start <= s.start < b.start + head_group.size * b.inner:
                    out.add(g.name)
    return out


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("product", ["sdpa", "matmul"])
@pytest.mark.parametrize("fused", [False, True, "reshape"])
def test_each_head_has_its_own_units_and_heads_move_as_blocks(capture, product, fused):
    torch.manual_seed(0)
    model = Net(heads=4, dh=2, product=product, fused=fused, layers=2).eval()
    spec = discover(model, _x(), capture=capture)
    heads = spec.heads
    assert len(heads) == 2 and all(h.permutable and h.size == 4 for h in heads), str(spec)
    inside = _units_inside(spec, heads[0])
    assert len(inside) == 8, inside  # 4 heads x (q·k dims, v·o dims)
    assert all(spec[n].permutable and spec[n].size == 2 for n in inside)
    assert_equivalent(model, _x(), spec=spec, seeds=(0, 1, 2))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_rotary_embeddings_fix_q_and_k_dims_but_not_heads_or_v_dims(capture):
    torch.manual_seed(0)
    model = Net(heads=3, dh=4, rope=True).eval()
    spec = discover(model, _x(), capture=capture)
    (heads,) = spec.heads
    assert heads.permutable, heads.reason
    inside = [spec[n] for n in _units_inside(spec, heads)]
    fixed = [g for g in inside if not g.permutable]
    free = [g for g in inside if g.permutable]
    assert fixed and all(g.fixes for g in fixed)
    assert sum(g.size for g in free) == 3 * 4  # v·o: every head its own 4 dims
    assert_equivalent(model, _x(), spec=spec, seeds=(0, 1))


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_heads_treated_unalike_are_fixed_and_the_fix_is_needed(breaker):
    torch.manual_seed(0)
    model = Net(heads=4, dh=2, product="matmul", breaker=breaker).eval()
    x = _x()
    spec = discover(model, x)
    heads = spec.heads
    assert heads and not any(h.permutable for h in heads), str(spec)
    assert any(BREAKERS[breaker] in h.reason for h in heads), [h.reason for h in heads]
    assert_equivalent(model, x, spec=spec, seeds=(0, 1))
    # forced, the same head permutation changes the function: the fix is not over-cautious
    free = {h.name: dataclasses.replace(h, permutable=True, fixes=()) for h in heads}
    forced = PermutationSpec({**spec.groups, **free}, capture=spec.capture)
    perms = {h.name: torch.tensor([1, 2, 3, 0]) for h in heads}  # crosses GroupNorm(2)'s groups
    with torch.no_grad():
        assert not torch.allclose(model(x), permute(model, forced, perms)(x), atol=1e-5)


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("product", ["sdpa", "matmul"])
@pytest.mark.parametrize("repeat", ["expand", "interleave"])
@pytest.mark.parametrize("rope", [False, True])
def test_grouped_query_heads_move_as_blocks_with_the_query_heads_that_share_them(
    capture, product, repeat, rope
):
    torch.manual_seed(0)
    model = Net(heads=6, dh=2, kv_heads=3, repeat=repeat, product=product, rope=rope, layers=2).eval()
    spec = discover(model, _x(), capture=capture)
    kv = [h for h in spec.heads if h.permutable]
    query = [h for h in spec.heads if not h.permutable]
    assert len(kv) == 2 and all(h.size == 3 for h in kv), str(spec)
    assert len(query) == 2 and all(SHARED_KV in h.reason for h in query), str(spec)
    # a key/value head moves the rows of its two query heads and their columns of the output
    blocks = {(s.tensor.rsplit(".", 2)[-2], s.axis): s.inner for s in kv[0].slices}
    assert blocks == {("q", 0): 4, ("k", 0): 2, ("v", 0): 2, ("o", 1): 4}, blocks
    # each key head's dims (with its query heads') and each value head's dims are groups of
    # their own; rotary embeddings fix the q and k dims
    inside = [spec[n] for n in _units_inside(spec, kv[0])]
    assert len([g for g in inside if g.permutable]) == (3 if rope else 6), [g.name for g in inside]
    assert_equivalent(model, _x(), spec=spec, seeds=(0, 1, 2))
    # the grouping is needed: a query head moved to another group (with its rows of q and its
    # columns of o) changes the function; moved within its group it would not (a symmetry
    # discovery leaves out: query heads keep their order within their group)
    with torch.no_grad():
        y = model(_x())
        assert not torch.allclose(y, _query_heads_moved(model, [2, 1, 0, 3, 4, 5])(_x()), atol=1e-5)
        assert torch.allclose(y, _query_heads_moved(model, [1, 0, 2, 3, 5, 4])(_x()), atol=1e-6)


def _query_heads_moved(model: Net, order: list[int]) -> Net:
    """``model`` with the query heads of its first attention block in ``order``: their rows of
    the query projection and their columns of the output projection."""
    moved = copy.deepcopy(model)
    attn = moved.blocks[0]
    rows = torch.tensor(order)[:, None] * attn.dh + torch.arange(attn.dh)
    with torch.no_grad():
        attn.q.weight.copy_(attn.q.weight[rows.flatten()])
        attn.q.bias.copy_(attn.q.bias[rows.flatten()])
        attn.o.weight.copy_(attn.o.weight[:, rows.flatten()])
    return moved


def test_grouped_query_heads_stay_in_place_when_their_query_heads_are_held():
    """ALiBi slopes per query head: the query heads' axis meets a constant, so the key/value
    heads that move query heads cannot move either."""
    torch.manual_seed(0)
    model = Net(heads=4, dh=2, kv_heads=2, product="matmul", breaker="head_bias").eval()
    spec = discover(model, _x())
    assert spec.heads and not any(h.permutable for h in spec.heads), str(spec)
    assert any("query heads' axis is held" in h.reason for h in spec.heads), [h.reason for h in spec.heads]
    assert_equivalent(model, _x(), spec=spec, seeds=(0, 1))
    free = {h.name: dataclasses.replace(h, permutable=True, fixes=()) for h in spec.heads if h.size == 2}
    forced = PermutationSpec({**spec.groups, **free}, capture=spec.capture)
    with torch.no_grad():
        moved = permute(model, forced, {name: torch.tensor([1, 0]) for name in free})
        assert not torch.allclose(model(_x()), moved(_x()), atol=1e-5)


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("fused", [False, True])
def test_partial_rotary_moves_heads_and_the_dims_it_does_not_rotate(capture, fused):
    """Phi and GPT-NeoX rotate part of each head's q/k dims and concatenate the rest back: the
    heads move, the rotated dims stay (with the reason), the others move (one permutation for
    every head: the concatenation treats every head alike)."""
    torch.manual_seed(0)
    model = Net(heads=4, dh=4, layers=2, rope="partial", fused=fused).eval()
    x = _x(batch=32, seed=2)
    spec = discover(model, x[:2], capture=capture)
    assert len(spec.heads) == 2 and all(h.permutable for h in spec.heads), str(spec)
    qk = [
        g
        for g in spec.groups.values()
        if g.hidden and {t.split(".")[-2] for t in g.tensors} <= {"q", "k", "qkv"}
    ]
    rotated = [g for g in qk if not g.permutable]
    assert rotated and all("never permuted" in g.reason for g in rotated), str(spec)
    assert sum(g.layer_units for g in rotated) == 2 * 2 * 4 * 2  # layers x (q, k) x heads x rotated dims
    assert any(g.permutable for g in qk), str(spec)  # the dims left as they are
    assert_equivalent(model, x[:4], spec=spec, seeds=(0, 1))
    perms = {**spec.random_permutation(4), **{h.name: torch.tensor([2, 0, 3, 1]) for h in spec.heads}}
    for cost in ("weight_matching", "correlation"):
        result = align(model, permute(model, spec, perms), x, cost=cost, spec=spec, labels=False)
        for k, v in model.state_dict().items():
            assert torch.allclose(v, result.model.state_dict()[k], atol=1e-6), (cost, k)


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize(("kv_heads", "rope"), [(None, False), (None, True), (2, True)])
def test_a_q_k_norm_shared_by_every_head_leaves_the_heads_free(capture, kv_heads, rope):
    """Qwen3's and Gemma-3's RMSNorm of ``head_dim`` on q and k: its weight gives every head's
    q/k dims one permutation, and whole heads still move (their key/value heads, under
    grouped-query attention, with rotary embeddings as those models have)."""
    torch.manual_seed(0)
    model = Net(heads=4, dh=4, layers=2, qk_norm=True, kv_heads=kv_heads, rope=rope).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.q_norm.weight.uniform_(0.5, 1.5)
            block.k_norm.weight.uniform_(0.5, 1.5)
    x = _x(batch=32, seed=1)
    spec = discover(model, x[:2], capture=capture)
    moving = [h for h in spec.heads if h.permutable]
    assert len(moving) == 2 and all(h.size == (kv_heads or 4) for h in moving), str(spec)
    assert_equivalent(model, x[:4], spec=spec, seeds=(0, 1))
    perms = {**spec.random_permutation(3), **{h.name: torch.arange(h.size).flip(0) for h in moving}}
    result = align(model, permute(model, spec, perms), x, cost="weight_matching", spec=spec, labels=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k]), k


@st.composite
def attention_nets(draw):
    rope = draw(st.booleans())
    kv_heads, heads = draw(st.sampled_from([(None, 2), (None, 3), (None, 4), (1, 2), (2, 4), (1, 3), (2, 6)]))
    dh = draw(st.sampled_from([2, 4] if rope else [1, 2, 3]))
    return dict(
        heads=heads,
        kv_heads=kv_heads,  # grouped-query (multi-query with 1) attention, or every head its own
        repeat=draw(st.sampled_from(["expand", "interleave"])),
        dh=dh,
        # timm's fused (3, heads, dims) view with dims = 1 reads as 3 heads of `heads` dims:
        # such heads are fixed (soundly), not moved
        fused=draw(st.sampled_from([False, True] if kv_heads or dh == 1 else [False, True, "reshape"])),
        rope=rope,
        product=draw(st.sampled_from(["sdpa", "matmul"])),
        causal=draw(st.booleans()),
        layers=draw(st.integers(1, 2)),
        # a q/k norm shared by every head, without rotary dims to tell the heads' q and k apart,
        # makes key/value heads and the query heads that share them read alike: those stay fixed
        qk_norm=draw(st.booleans()) if rope or kv_heads is None else False,
    )


@settings(max_examples=12, deadline=None)
@given(config=attention_nets(), seed=st.integers(0, 2**16))
def test_generated_attention_nets_keep_their_function_and_are_recovered(config, seed):
    torch.manual_seed(seed)
    model = Net(**config).eval()
    x = _x(batch=32, seed=seed)
    spec = discover(model, x[:2])
    # every head group moves, except query heads that share a key/value head (which moves them)
    # and the single key/value head of multi-query attention
    for h in spec.heads:
        shared = config["kv_heads"] is not None and h.size == config["heads"]
        assert h.permutable is not (shared or h.size == 1), str(spec)
    assert_equivalent(model, x[:4], spec=spec, seeds=(seed,), train=False)
    perms = spec.random_permutation(seed)
    permuted = permute(model, spec, perms)
    for cost in ("weight_matching", "l2_preact"):
        result = align(model, permuted, x, cost=cost, spec=spec, labels=False)
        for k, v in model.state_dict().items():
            assert torch.allclose(v, result.model.state_dict()[k], atol=1e-6), (cost, k)


@pytest.mark.parametrize("cost", ["weight_matching", "correlation", "l2_preact"])
def test_align_recovers_planted_head_and_unit_permutations(cost):
    torch.manual_seed(1)
    model = Net(heads=4, dh=3, layers=2).eval()
    x = _x(batch=64, seed=1)
    spec = discover(model, x[:2])
    perms = spec.random_permutation(5)
    assert any(not torch.equal(perms[h.name], torch.arange(h.size)) for h in spec.heads)
    result = align(model, permute(model, spec, perms), x, cost=cost, spec=spec, labels=False)
    for h in spec.heads:  # perms[g][i] = unit of B at position i: the inverse of the planted one
        assert torch.equal(result.perms[h.name], torch.argsort(perms[h.name])), h.name
    for k, v in model.state_dict().items():
        assert torch.allclose(v, result.model.state_dict()[k], atol=1e-6), k


def test_a_spec_with_heads_survives_json():
    model = Net(heads=2, dh=2).eval()
    spec = discover(model, _x())
    again = PermutationSpec.from_json(spec.to_json())
    assert [g.kind for g in again] == [g.kind for g in spec] and again.heads


def test_timm_vision_transformers_move_their_heads():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    spec = discover(model, x)
    assert len(spec.heads) == 2 and all(h.permutable and h.size == 3 for h in spec.heads), str(spec)
    assert_equivalent(model, x, spec=spec, seeds=(0,), train=False)
    planted = spec.random_permutation(4)
    result = align(model, permute(model, spec, planted), cost="weight_matching", spec=spec)
    for h in spec.heads:
        assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name]))


@pytest.mark.parametrize("cost", ["weight_matching", "correlation"])
def test_torchvision_vision_transformers_move_their_heads_and_are_recovered(cost):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()
    x = torch.randn(64, 3, 16, 16)
    spec = discover(model, x[:2])
    assert len(spec.heads) == 2 and all(h.permutable for h in spec.heads), str(spec)
    assert_equivalent(model, x[:2], spec=spec, seeds=(0,), train=False)
    planted = spec.random_permutation(1)
    result = align(model, permute(model, spec, planted), x, cost=cost, spec=spec, labels=False)
    for h in spec.heads:
        assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name])), h.name
    for k, v in model.state_dict().items():
        assert torch.allclose(v, result.model.state_dict()[k], atol=1e-6), k


def test_swin_moves_its_heads_with_their_relative_position_biases():
    """Swin adds a bias per head gathered from a table by relative position: the lookup fixes
    the table's positions, and its heads axis moves with the heads. fx keeps timm's
    window_partition/window_reverse whole, so auto capture takes torch.export."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=56, embed_dim=24, depths=(1, 1), num_heads=(2, 4)
    ).eval()
    with torch.no_grad():  # non-zero tables (zeros at init), so that a wrong move shows
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    x = torch.randn(2, 3, 56, 56)
    spec = discover(model, x)
    assert spec.capture == "export"
    assert [(h.size, h.permutable) for h in spec.heads] == [(2, True), (4, True)], str(spec)
    tables = {s.tensor for h in spec.heads for s in h.slices if "relative_position_bias_table" in s.tensor}
    assert len(tables) == 2, spec.heads
    assert spec.units()[0] == spec.units()[1], str(spec)
    assert_equivalent(model, x, spec=spec, seeds=(0, 1), train=False)
    planted = spec.random_permutation(3)
    result = align(model, permute(model, spec, planted), cost="weight_matching", spec=spec)
    for h in spec.heads:
        assert torch.equal(result.perms[h.name], torch.argsort(planted[h.name])), h.name


@pytest.mark.parametrize("per_head_weights", [False, True])
def test_multihead_attention_modules_move_their_heads_unless_per_head_weights_leave(per_head_weights):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(5, 8)
            self.attn = nn.MultiheadAttention(8, 4, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.embed(x)
            y, w = self.attn(h, h, h, average_attn_weights=not per_head_weights)
            out = self.head(y.mean(1))
            return (out, w) if per_head_weights else out

    torch.manual_seed(0)
    model = Block().eval()
    spec = discover(model, _x())
    (heads,) = spec.heads
    assert heads.permutable is not per_head_weights, heads.reason
    assert_equivalent(model, _x(), spec=spec, seeds=(0, 1), train=False)
