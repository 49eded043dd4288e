"""Generated architectures: a hypothesis strategy that composes random DAGs of ordinary blocks.

``plans()`` draws a list of ops over a growing pool of values — images (N, C, H, W) and token
sequences (N, T, C) — and :class:`GeneratedNet` runs them. Blocks: convolutions (1x1, 3x3,
strided, depthwise, grouped, subclassed), linear layers, residual sums and gates, channel
concatenation, splits and slices, squeeze-excitation, BatchNorm, GroupNorm, InstanceNorm,
LayerNorm channels-last, RMSNorm, hand-written attention over tokens (fused or separate q/k/v,
manual softmax or sdpa, causal or not) and over channels, pooling and upsampling, image <->
token reshapes, channel-wise buffers and parameters, layers whose weights are built from flat parameters
(``view``, ``reshape``, ``unflatten``, ``chunk`` into weights, used by ``F.linear``, ``F.conv2d``,
``matmul`` and ``einsum``, and attention whose q/k/v weights are cut from one flat parameter);
and ops that must block a permutation:
channel shuffle, flip / roll / cumsum over channels, a fixed index tensor, a non-persistent
per-channel buffer, and weights tied between two layers.

Every op is sound to generate: the function of the net is fully defined, so a permutation
that discovery allows must keep it (test_generated.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

N, H0 = 4, 4  # batch, input size (N, 3, H0, H0)


@dataclass(frozen=True)
class Value:
    kind: str  # "img" (N, C, H, H) or "tok" (N, T, C)
    c: int
    h: int  # image side, or number of tokens


@dataclass(frozen=True)
class Op:
    kind: str
    inputs: tuple[int, ...]
    opts: tuple  # kind-specific, hashable
    out: Value


class SubConv(nn.Conv2d):
    """A subclass that computes the same as its base through an overridden helper."""

    def _conv_forward(self, input, weight, bias):
        return super()._conv_forward(input, weight, bias)


class GainConv(nn.Conv2d):
    """A subclass whose helper adds a per-input-channel gain: not the base's function."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.gain = nn.Parameter(torch.rand(self.in_channels) + 0.5)

    def _conv_forward(self, input, weight, bias):
        return super()._conv_forward(input * self.gain[:, None, None], weight, bias)


def _choice(draw, options):
    return options[draw(st.integers(0, len(options) - 1))]


@st.composite
def plans(draw, max_ops: int = 12) -> list[Op]:
    """A random plan: a stem convolution, then ops over the pool of values so far."""
    width = draw(st.sampled_from(WIDTHS[1:]))
    pool = [Value("img", 3, H0)]
    ops: list[Op] = [
        Op("conv", (0,), (draw(st.sampled_from((1, 3))), 1, width, "plain"), Value("img", width, H0))
    ]
    if draw(st.integers(0, 2)) == 0:  # a transformer: patches become tokens
        ops.append(Op("to_tok", (1,), (), Value("tok", width, H0 * H0)))
    pool += [op.out for op in ops]
    for _ in range(draw(st.integers(3, max_ops))):
        op = draw(_op(pool, ops))
        if op is not None:
            ops.append(op)
            pool.append(op.out)
    return ops


def _pick(draw, pool, pred=lambda v: True) -> int | None:
    """An index into the pool, favouring recent values."""
    idx = [i for i, v in enumerate(pool) if pred(v)]
    if not idx:
        return None
    recent = idx[-3:]
    return draw(st.sampled_from(recent)) if draw(st.booleans()) else draw(st.sampled_from(idx))


WIDTHS = (2, 3, 4, 6, 8)


@st.composite
def _op(draw, pool, ops) -> Op | None:
    kind = draw(st.sampled_from(_MENU))
    return _tied(draw, pool, ops) if kind == "tied" else _OPS[kind](draw, pool)


def _img(v):
    return v.kind == "img"


def _tok(v):
    return v.kind == "tok"


def _conv(draw, pool):
    i = _pick(draw, pool, _img)
    v = pool[i]
    k = draw(st.sampled_from((1, 3)))
    stride = 2 if v.h >= 4 and draw(st.integers(0, 3)) == 0 else 1
    cout = draw(st.sampled_from(WIDTHS))
    variant = draw(st.sampled_from(("plain", "plain", "sub", "gain")))
    return Op("conv", (i,), (k, stride, cout, variant), Value("img", cout, (v.h + stride - 1) // stride))


def _dwconv(draw, pool):
    i = _pick(draw, pool, _img)
    v = pool[i]
    mult = draw(st.sampled_from((1, 2)))
    return Op("dwconv", (i,), (mult,), Value("img", v.c * mult, v.h))


def _gconv(draw, pool):
    i = _pick(draw, pool, lambda v: _img(v) and v.c % 2 == 0)
    if i is None:
        return None
    cout = draw(st.sampled_from((2, 4, 6)))
    return Op("gconv", (i,), (cout,), Value("img", cout, pool[i].h))


def _norm(draw, pool):
    i = _pick(draw, pool)
    v = pool[i]
    if v.kind == "tok":
        kind = draw(st.sampled_from(("ln", "rms")))
    else:
        kind = draw(st.sampled_from(("bn", "gn", "in", "ln_last")))
        if (kind == "gn" and v.c % 2) or (kind == "in" and v.h == 1):  # InstanceNorm needs two positions
            kind = "bn"
    return Op("norm", (i,), (kind,), v)


def _act(draw, pool):
    i = _pick(draw, pool)
    return Op("act", (i,), (draw(st.sampled_from(("relu", "gelu", "tanh", "silu", "relu_"))),), pool[i])


def _binary(draw, pool):
    i = _pick(draw, pool)
    v = pool[i]
    j = _pick(draw, pool, lambda u: u == v)
    kind = draw(st.sampled_from(("add", "add", "mul", "max", "sub_scaled")))
    return Op("binary", (i, j), (kind,), v)


def _cat(draw, pool):
    i = _pick(draw, pool)
    v = pool[i]
    j = _pick(draw, pool, lambda u: u.kind == v.kind and u.h == v.h)
    first = draw(st.booleans())
    a, b = (i, j) if first else (j, i)
    return Op("cat", (a, b), (), Value(v.kind, pool[a].c + pool[b].c, v.h))


def _slice(draw, pool):
    i = _pick(draw, pool, lambda v: v.c >= 2)
    if i is None:
        return None
    v = pool[i]
    a = draw(st.integers(0, v.c - 1))
    b = draw(st.integers(a + 1, v.c))
    how = draw(st.sampled_from(("slice", "narrow", "split")))
    return Op("slice", (i,), (a, b, how), Value(v.kind, b - a, v.h))


def _se(draw, pool):
    i = _pick(draw, pool, _img)
    return Op("se", (i,), (draw(st.sampled_from((1, 2, 3))),), pool[i])


def _spatial(draw, pool):
    i = _pick(draw, pool, _img)
    v = pool[i]
    options = [
        k
        for k, ok in (("max", v.h % 2 == 0), ("avg", v.h % 2 == 0), ("up", v.h <= 4), ("adaptive", True))
        if ok
    ]
    kind = _choice(draw, options)
    h = {"max": v.h // 2, "avg": v.h // 2, "up": v.h * 2, "adaptive": 1}[kind]
    return Op("spatial", (i,), (kind,), Value("img", v.c, h))


def _to_tokens(draw, pool):
    i = _pick(draw, pool, lambda v: _img(v) and v.h >= 2)
    if i is None:
        return None
    v = pool[i]
    return Op("to_tok", (i,), (), Value("tok", v.c, v.h * v.h))


def _to_image(draw, pool):
    i = _pick(draw, pool, lambda v: _tok(v) and math.isqrt(v.h) ** 2 == v.h)
    if i is None:
        return None
    v = pool[i]
    return Op("to_img", (i,), (), Value("img", v.c, math.isqrt(v.h)))


def _linear(draw, pool):
    i = _pick(draw, pool, _tok)
    if i is None:
        return None
    cout = draw(st.sampled_from(WIDTHS))
    return Op("linear", (i,), (cout,), Value("tok", cout, pool[i].h))


def _attention(draw, pool):
    i = _pick(draw, pool, lambda v: _tok(v) and v.c % 2 == 0)
    if i is None:
        return None
    v = pool[i]
    heads = draw(st.sampled_from([h for h in (1, 2) if v.c % h == 0]))
    fused = draw(st.booleans())
    how = draw(st.sampled_from(("sdpa", "manual", "sdpa_causal", "manual_causal")))
    flat = draw(st.booleans())  # q/k/v weights cut from one flat parameter
    return Op("attn", (i,), (heads, fused, how, flat), v)


FLAT_WAYS = ("view", "reshape", "unflatten", "matmul", "chunk", "conv", "conv3", "einsum")


def _flat(draw, pool):
    """A layer whose weight is a flat parameter viewed as a matrix (or a conv kernel)."""
    i = _pick(draw, pool)
    v = pool[i]
    how = draw(st.sampled_from(FLAT_WAYS if _img(v) else FLAT_WAYS[:5] + FLAT_WAYS[7:]))
    cout = draw(st.sampled_from(WIDTHS))
    return Op("flat", (i,), (how, cout), Value(v.kind, cout, v.h))


def _channel_attention(draw, pool):
    i = _pick(draw, pool, _img)
    return Op("chan_attn", (i,), (draw(st.booleans()),), pool[i])


def _channel_param(draw, pool):
    i = _pick(draw, pool)
    return Op("chan_param", (i,), (draw(st.sampled_from(("param", "buffer", "nonpersistent"))),), pool[i])


def _blocker(draw, pool):
    i = _pick(draw, pool, lambda v: v.c >= 2)
    if i is None:
        return None
    v = pool[i]
    options = ["flip", "roll", "cumsum", "index"] + (["shuffle"] if v.c % 2 == 0 and _img(v) else [])
    return Op("block", (i,), (_choice(draw, options),), v)


def _tied(draw, pool, ops):
    """A 1x1 conv that shares its weight with an earlier one of its shape, when there is one."""
    i = _pick(draw, pool, _img)
    c = pool[i].c
    shapes = [op.out.c for op in ops if op.kind in ("conv", "tied") and pool[op.inputs[0]].c == c]
    cout = (
        draw(st.sampled_from(shapes)) if shapes and draw(st.integers(0, 3)) else draw(st.sampled_from(WIDTHS))
    )
    return Op("tied", (i,), (cout,), Value("img", cout, pool[i].h))


_OPS = {
    "conv": _conv,
    "dwconv": _dwconv,
    "gconv": _gconv,
    "norm": _norm,
    "act": _act,
    "binary": _binary,
    "cat": _cat,
    "slice": _slice,
    "se": _se,
    "spatial": _spatial,
    "to_tok": _to_tokens,
    "to_img": _to_image,
    "linear": _linear,
    "attn": _attention,
    "chan_attn": _channel_attention,
    "flat": _flat,
    "chan_param": _channel_param,
    "block": _blocker,
    "tied": _tied,
}
# layers that make units come up more often than the ops that only move them
_MENU = sorted(_OPS) + ["conv", "conv", "linear", "linear", "attn", "attn", "to_img", "tied", "flat", "gconv"]


class GeneratedNet(nn.Module):
    """Runs a plan; the head reads the mean of the last value over its spatial or token axis."""

    def __init__(self, plan: list[Op]):
        super().__init__()
        self.plan = plan
        self.layers = nn.ModuleDict()
        pool = [Value("img", 3, H0)]
        tied_sources: dict[tuple[int, int], str] = {}
        for n, op in enumerate(plan):
            name = f"op{n}"
            c = pool[op.inputs[0]].c
            if op.kind == "conv":
                k, stride, cout, variant = op.opts
                cls = {"plain": nn.Conv2d, "sub": SubConv, "gain": GainConv}[variant]
                self.layers[name] = cls(c, cout, k, stride=stride, padding=k // 2)
                if k == 1 and stride == 1 and variant == "plain":
                    tied_sources.setdefault((c, cout), name)
            elif op.kind == "dwconv":
                self.layers[name] = nn.Conv2d(c, op.out.c, 3, padding=1, groups=c)
            elif op.kind == "gconv":
                self.layers[name] = nn.Conv2d(c, op.out.c, 1, groups=2)
            elif op.kind == "norm":
                kind = op.opts[0]
                norms = {"bn": nn.BatchNorm2d, "gn": lambda c: nn.GroupNorm(2, c), "ln": nn.LayerNorm}
                norms |= {"in": lambda c: nn.InstanceNorm2d(c, affine=True), "ln_last": nn.LayerNorm}
                self.layers[name] = {**norms, "rms": nn.RMSNorm}[kind](c)
            elif op.kind == "se":
                r = op.opts[0]
                self.layers[name] = nn.Sequential(
                    nn.Conv2d(c, r, 1), nn.ReLU(), nn.Conv2d(r, c, 1), nn.Sigmoid()
                )
            elif op.kind == "linear":
                self.layers[name] = nn.Linear(c, op.out.c)
            elif op.kind == "attn":
                heads, fused, _, flat = op.opts
                if flat:
                    qkv = nn.ParameterList(
                        [nn.Parameter(torch.randn(3 * c * c) / c), nn.Parameter(torch.randn(3 * c))]
                    )
                elif fused:
                    qkv = nn.Linear(c, 3 * c)
                else:
                    qkv = nn.ModuleList(nn.Linear(c, c) for _ in range(3))
                self.layers[name] = nn.ModuleDict({"qkv": qkv, "proj": nn.Linear(c, c)})
            elif op.kind == "flat":
                how, cout = op.opts
                k = 9 if how == "conv3" else 1
                n = cout * c * k * (2 if how == "chunk" else 1)
                self.register_parameter(f"{name}_w", nn.Parameter(torch.randn(n) / math.sqrt(c * k)))
                self.register_parameter(f"{name}_b", nn.Parameter(0.1 * torch.randn(cout)))
            elif op.kind == "chan_param":
                how = op.opts[0]
                shape = (c, 1, 1) if pool[op.inputs[0]].kind == "img" else (c,)
                t = torch.rand(shape) + 0.5
                if how == "param":
                    self.register_parameter(f"{name}_s", nn.Parameter(t))
                else:
                    self.register_buffer(f"{name}_s", t, persistent=how == "buffer")
            elif op.kind == "block" and op.opts[0] == "index":
                self.register_buffer(f"{name}_idx", torch.randperm(c))
            elif op.kind == "tied":
                cout = op.out.c
                self.layers[name] = nn.Conv2d(c, cout, 1)
                if (c, cout) in tied_sources:
                    self.layers[name].weight = self.layers[tied_sources[(c, cout)]].weight
                tied_sources.setdefault((c, cout), name)
            pool.append(op.out)
        last = pool[-1]
        self.head = nn.Linear(last.c, 3)
        self.pool = pool  # the plan is static: its shapes are known without looking at tensors

    def forward(self, x):
        vals = [x]
        for n, op in enumerate(self.plan):
            vals.append(self._run(n, op, [vals[i] for i in op.inputs]))
        y = vals[-1]
        y = y.mean((2, 3)) if self.pool[-1].kind == "img" else y.mean(1)
        return self.head(y)

    def _run(self, n: int, op: Op, xs):
        name = f"op{n}"
        x = xs[0]
        v = self.pool[op.inputs[0]]
        img = v.kind == "img"
        cax = 1 if img else -1
        if op.kind in ("conv", "dwconv", "gconv", "linear", "tied"):
            return self.layers[name](x)
        if op.kind == "norm":
            if op.opts[0] == "ln_last":
                return self.layers[name](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.layers[name](x)
        if op.kind == "act":
            fn = op.opts[0]
            if fn == "relu_":
                return F.relu(x.clone(), inplace=True)
            return {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}[fn](x)
        if op.kind == "binary":
            a, b = xs
            kind = op.opts[0]
            if kind == "add":
                return a + b
            if kind == "mul":
                return a * torch.sigmoid(b)
            if kind == "max":
                return torch.max(a, b)
            return a - 0.5 * b
        if op.kind == "cat":
            return torch.cat(xs, dim=cax)
        if op.kind == "slice":
            a, b, how = op.opts
            if how == "narrow":
                return x.narrow(cax, a, b - a)
            if how == "split":
                pieces = [p for p in (a, b - a, v.c - b) if p]
                k = 1 if a else 0
                return torch.split(x, pieces, dim=cax)[k]
            return x[:, a:b] if img else x[..., a:b]
        if op.kind == "se":
            return x * self.layers[name](x.mean((2, 3), keepdim=True))
        if op.kind == "spatial":
            kind = op.opts[0]
            if kind == "max":
                return F.max_pool2d(x, 2)
            if kind == "avg":
                return F.avg_pool2d(x, 2)
            if kind == "up":
                return F.interpolate(x, scale_factor=2, mode="nearest")
            return F.adaptive_avg_pool2d(x, 1)
        if op.kind == "to_tok":
            return x.flatten(2).transpose(1, 2)
        if op.kind == "to_img":
            side = op.out.h
            return x.transpose(1, 2).reshape(-1, v.c, side, side)
        if op.kind == "attn":
            return self._attention(name, op, x)
        if op.kind == "flat":
            return self._flat(name, op, x, img)
        if op.kind == "chan_attn":
            h = x.flatten(2)
            if op.opts[0]:
                out = F.scaled_dot_product_attention(h, h, h)
            else:
                out = torch.softmax(h @ h.transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1) @ h
            return x + out.view_as(x)
        if op.kind == "chan_param":
            return x * getattr(self, f"{name}_s")
        if op.kind == "block":
            kind = op.opts[0]
            if kind == "flip":
                return x.flip(cax)
            if kind == "roll":
                return torch.roll(x, 1, cax)
            if kind == "cumsum":
                return x.cumsum(cax) / v.c
            if kind == "index":
                idx = getattr(self, f"{name}_idx")
                return x[:, idx] if img else x[..., idx]
            c, h = v.c, v.h  # channel shuffle in two groups
            return x.view(-1, 2, c // 2, h, h).transpose(1, 2).reshape(-1, c, h, h)
        raise AssertionError(op.kind)

    def _flat(self, name: str, op: Op, x, img: bool):
        how, cout = op.opts
        w, bias = getattr(self, f"{name}_w"), getattr(self, f"{name}_b")
        c = self.pool[op.inputs[0]].c
        if how in ("conv", "conv3"):
            k = 3 if how == "conv3" else 1
            return F.conv2d(x, w.view(cout, c, k, k), bias, padding=k // 2)
        h = x.permute(0, 2, 3, 1) if img else x  # channels last
        if how == "view":
            y = F.linear(h, w.view(cout, c), bias)
        elif how == "reshape":
            y = F.linear(h, w.reshape(cout, c), bias)
        elif how == "unflatten":
            y = F.linear(h, w.unflatten(0, (cout, c)), bias)
        elif how == "matmul":
            y = h @ w.view(c, cout) + bias
        elif how == "einsum":
            y = torch.einsum("...i,oi->...o", h, w.view(cout, c)) + bias
        else:  # chunk: a gated layer whose two weights are the halves of one parameter
            wa, wb = w.chunk(2)
            y = F.linear(h, wa.view(cout, c), bias) * torch.sigmoid(F.linear(h, wb.reshape(cout, c)))
        return y.permute(0, 3, 1, 2) if img else y

    def _attention(self, name: str, op: Op, x):
        heads, fused, how, flat = op.opts
        t, c = op.out.h, op.out.c
        b = x.shape[0]
        d = c // heads
        mods = self.layers[name]
        if flat:
            w, bias = mods["qkv"]
            if fused:
                qkv = F.linear(x, w.view(3 * c, c), bias)
                q, k, v = qkv.reshape(b, t, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            else:
                q, k, v = (
                    F.linear(x, wi.view(c, c), bi).view(b, t, heads, d).transpose(1, 2)
                    for wi, bi in zip(w.chunk(3), bias.chunk(3))
                )
        elif fused:
            q, k, v = mods["qkv"](x).reshape(b, t, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (m(x).view(b, t, heads, d).transpose(1, 2) for m in mods["qkv"])
        causal = how.endswith("causal")
        if how.startswith("sdpa"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            s = q @ k.transpose(-2, -1) / math.sqrt(d)
            if causal:
                s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            o = s.softmax(-1) @ v
        return x + mods["proj"](o.transpose(1, 2).reshape(b, t, c))


def build(plan: list[Op], seed: int = 0) -> GeneratedNet:
    """The net of ``plan`` in float64, with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    return GeneratedNet(plan).double()


def inputs(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, H0, H0, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
