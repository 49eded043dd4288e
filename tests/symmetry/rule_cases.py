"""Micro-models that exercise every key of the rule table, in each of its call forms.

A case is a small model: producer layers (``p1``, ``p2``: new units) feed the op under test,
and a linear head reads its result. ``expect`` says what a sound *and* useful rule gives:
``"free"`` — the producer ``p1`` stays permutable; ``"fixed"`` — the op fixes ``p1`` (an order
dependent op); ``"any"`` — only soundness is checked. test_rule_table.py checks every case
(random permutations keep the function, eval and train mode) and that every registered key
has a case whose traced graph really calls it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

C = 6  # units of each producer
N = 3  # batch


@dataclass
class Case:
    name: str
    keys: tuple
    op: Callable  # op(m, h1, h2) -> tensor, traced inside Micro.forward
    src: str = "img"  # img (N, 3, 5, 5) -> conv; seq (N, 4, 5) -> linear; vec (N, 5) -> linear; line (N, 3, 7) -> conv1d
    expect: str = "free"
    modules: dict = field(default_factory=dict)  # name -> factory of a submodule, as m.mods[name]
    params: dict = field(default_factory=dict)  # name -> shape of an extra parameter, as m.params[name]
    buffers: dict = field(
        default_factory=dict
    )  # name -> factory of a tensor buffer, as getattr(m, "b_" + name)
    ids: bool = False  # the model input is token ids (N, 4) < 10, embedded by the op itself
    requires: str = ""  # "cuda": the case only runs where CUDA is


_SOURCES = {"img": (3, 5, 5), "seq": (4, 5), "vec": (5,), "line": (3, 7)}


class Micro(nn.Module):
    """Two producers, the op under test, a head."""

    def __init__(self, case: Case):
        super().__init__()
        self.case = case
        if case.src in ("img",):
            self.p1, self.p2 = nn.Conv2d(3, C, 1), nn.Conv2d(3, C, 1)
        elif case.src == "line":
            self.p1, self.p2 = nn.Conv1d(3, C, 1), nn.Conv1d(3, C, 1)
        else:
            self.p1, self.p2 = nn.Linear(5, C), nn.Linear(5, C)
        self.mods = nn.ModuleDict({k: f() for k, f in case.modules.items()})
        self.params = nn.ParameterDict({k: nn.Parameter(torch.randn(*s)) for k, s in case.params.items()})
        for k, f in case.buffers.items():
            self.register_buffer(f"b_{k}", f())
        with torch.no_grad():
            y = self.body(example_input(case))
        self.head = nn.Linear(y.flatten(1).shape[1], 3)

    def body(self, x):
        if self.case.ids:
            return self.case.op(self, x, None)
        return self.case.op(self, self.p1(x), self.p2(x))

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def example_input(case: Case, batch: int = N) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if case.ids:
        return torch.randint(0, 10, (batch, 4), generator=gen)
    return torch.randn(batch, *_SOURCES[case.src], generator=gen)


CASES: list[Case] = []


def case(name: str, keys, op, **kw) -> None:
    CASES.append(Case(name, tuple(keys) if isinstance(keys, (tuple, list)) else (keys,), op, **kw))


def m_(name: str) -> str:
    return f"method:{name}"


# -- activations: modules, functions, methods ---------------------------------------------------
ACT_MODULES = {
    nn.ReLU: nn.ReLU,
    nn.ReLU6: nn.ReLU6,
    nn.LeakyReLU: lambda: nn.LeakyReLU(0.2),
    nn.ELU: nn.ELU,
    nn.SELU: nn.SELU,
    nn.CELU: nn.CELU,
    nn.GELU: nn.GELU,
    nn.SiLU: nn.SiLU,
    nn.Mish: nn.Mish,
    nn.Hardswish: nn.Hardswish,
    nn.Hardsigmoid: nn.Hardsigmoid,
    nn.Sigmoid: nn.Sigmoid,
    nn.Tanh: nn.Tanh,
    nn.Softplus: nn.Softplus,
    nn.Hardtanh: nn.Hardtanh,
    nn.Softsign: nn.Softsign,
    nn.Tanhshrink: nn.Tanhshrink,
    nn.LogSigmoid: nn.LogSigmoid,
    nn.Softshrink: nn.Softshrink,
    nn.Hardshrink: nn.Hardshrink,
    nn.Threshold: lambda: nn.Threshold(0.1, -1.0),
    nn.PReLU: lambda: nn.PReLU(C),
}
for cls, make in ACT_MODULES.items():
    case(f"module {cls.__name__}", cls, lambda m, a, b: m.mods["act"](a), modules={"act": make})
case("module PReLU shared slope", nn.PReLU, lambda m, a, b: m.mods["act"](a), modules={"act": nn.PReLU})

_POSITIVE = {"sqrt", "rsqrt", "log", "reciprocal", "sqrt_"}
ACT_FUNCTIONS = {
    F.relu: (),
    F.relu_: (),
    F.relu6: (),
    F.leaky_relu: (0.2,),
    F.leaky_relu_: (0.2,),
    F.elu: (),
    F.selu: (),
    F.celu: (),
    F.gelu: (),
    F.silu: (),
    F.mish: (),
    F.hardswish: (),
    F.hardsigmoid: (),
    F.softplus: (),
    F.hardtanh: (),
    F.softsign: (),
    F.logsigmoid: (),
    F.tanhshrink: (),
    F.softshrink: (),
    F.hardshrink: (),
    F.threshold: (0.1, -1.0),
    torch.clamp: (-0.3, 0.4),
    torch.clip: (-0.3, 0.4),
}
for name in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "sqrt", "rsqrt", "abs", "neg"):
    ACT_FUNCTIONS[getattr(torch, name)] = ()
for name in ("square", "sign", "erf", "log", "sin", "cos", "reciprocal", "clamp_"):
    ACT_FUNCTIONS[getattr(torch, name)] = (-0.3, 0.4) if name == "clamp_" else ()


def _positive(fn) -> bool:
    return getattr(fn, "__name__", "") in _POSITIVE


for fn, extra in ACT_FUNCTIONS.items():
    inplace = getattr(fn, "__name__", "").endswith("_")

    def op(m, a, b, fn=fn, extra=extra, inplace=inplace):
        x = a.exp() if _positive(fn) else a
        return fn(x.clone() if inplace else x, *extra)

    case(f"function {fn.__name__}", fn, op)
case("clamp with tensor bounds", torch.clamp, lambda m, a, b: torch.clamp(a, min=-b.abs(), max=b.abs()))
case("clamp keyword", torch.clamp, lambda m, a, b: torch.clamp(input=a, min=-0.2))
case("F.relu keyword", F.relu, lambda m, a, b: F.relu(input=a))
case("F.leaky_relu keyword", F.leaky_relu, lambda m, a, b: F.leaky_relu(a, negative_slope=0.1))

ACT_METHODS = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "sqrt", "rsqrt", "abs", "neg")
ACT_METHODS += ("square", "sign", "erf", "log", "sin", "cos", "reciprocal", "exp_", "sqrt_", "abs_", "neg_")
for name in ACT_METHODS:

    def op(m, a, b, name=name):
        x = a.exp() if name in _POSITIVE else a
        return getattr(x.clone() if name.endswith("_") else x, name)()

    case(f"method {name}", m_(name), op)
for name in ("clamp", "clamp_", "clip"):

    def op(m, a, b, name=name):
        return getattr(a.clone(), name)(-0.3, 0.4)

    case(f"method {name}", m_(name), op)
case("method clamp keyword", m_("clamp"), lambda m, a, b: a.clamp(min=b))

# -- elementwise binary ops --------------------------------------------------------------------
case("operator.add", operator.add, lambda m, a, b: a + b)
case("operator.add scalar first", operator.add, lambda m, a, b: 2.0 + a)
case("operator.sub", operator.sub, lambda m, a, b: 1.0 - a + b)
case("operator.mul", operator.mul, lambda m, a, b: a * b)
case("operator.mul broadcast param", operator.mul, lambda m, a, b: a * m.params["s"], params={"s": (C, 1, 1)})
case("operator.truediv", operator.truediv, lambda m, a, b: a / (b.exp() + 1))
case("operator.floordiv", operator.floordiv, lambda m, a, b: (a * 3) // 1)
case("operator.mod", operator.mod, lambda m, a, b: a % 0.7)
case("operator.neg", operator.neg, lambda m, a, b: -a)
case("operator.pow", operator.pow, lambda m, a, b: a**2)


def _inplace(m, a, b):
    c = a.clone()
    c += b  # fx records augmented assignment as the plain operator
    c *= b.exp()
    return c


case("augmented assignment", (operator.add, operator.mul), _inplace)
for op_ in (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
    case(f"comparison {op_.__name__}", op_, lambda m, a, b, op_=op_: torch.where(op_(a, b), a, b))
case(
    "shape arithmetic",
    (operator.floordiv, m_("size")),
    lambda m, a, b: a.reshape(a.size(0), a.size(1), -1)[:, : a.size(1) // 2],
)

for name in ("add", "sub", "mul", "div", "maximum", "minimum"):
    fn = getattr(torch, name)
    case(f"torch.{name}", fn, lambda m, a, b, fn=fn: fn(a, b))
    case(f"torch.{name} keyword", fn, lambda m, a, b, fn=fn: fn(input=a, other=b))
    case(f"method {name}", m_(name), lambda m, a, b, name=name: getattr(a, name)(b))
case("torch.add alpha", torch.add, lambda m, a, b: torch.add(a, b, alpha=2))
case("torch.add scalar", torch.add, lambda m, a, b: torch.add(a, 3.0))
case("torch.pow", torch.pow, lambda m, a, b: torch.pow(a, 2) + torch.pow(2.0, b))
case("method pow", m_("pow"), lambda m, a, b: a.pow(2))
for name in ("add_", "sub_", "mul_", "div_"):
    case(f"method {name}", m_(name), lambda m, a, b, name=name: getattr(a.clone(), name)(b.exp() + 1))
for name in (
    "__add__",
    "__radd__",
    "__mul__",
    "__rmul__",
    "__sub__",
    "__rsub__",
    "__truediv__",
    "__rtruediv__",
):
    case(
        f"explicit {name}",
        operator.truediv if "div" in name else getattr(operator, name.strip("_").removeprefix("r")),
        lambda m, a, b, name=name: getattr(a, name)(b.exp() + 1),
    )
case(
    "torch.where bool buffer",
    torch.where,
    lambda m, a, b: torch.where(m.b_mask, a, b),
    buffers={"mask": lambda: torch.rand(C, 1, 1) > 0.5},
)
case("method where", m_("where"), lambda m, a, b: a.where(a > b, b))
case(
    "masked_fill",
    m_("masked_fill"),
    lambda m, a, b: a.masked_fill(m.b_mask, 0.5),
    buffers={"mask": lambda: torch.rand(C, 1, 1) > 0.5},
)
case("masked_fill_", m_("masked_fill_"), lambda m, a, b: a.clone().masked_fill_(a > b, 0.0))
case("torch.masked_fill", torch.masked_fill, lambda m, a, b: torch.masked_fill(a, a < b, 1.0))
case("torch.lerp", torch.lerp, lambda m, a, b: torch.lerp(a, b, 0.3))
case("method lerp", m_("lerp"), lambda m, a, b: a.lerp(b, b.sigmoid()))
case("torch.addcmul", torch.addcmul, lambda m, a, b: torch.addcmul(a, b, a, value=0.5))
case("method addcmul", m_("addcmul"), lambda m, a, b: a.addcmul(b, b))
case("torch.addcdiv", torch.addcdiv, lambda m, a, b: torch.addcdiv(a, b, b.exp()))
case("method addcdiv", m_("addcdiv"), lambda m, a, b: a.addcdiv(b, b.exp(), value=2))
for name in ("eq", "ne", "lt", "le", "gt", "ge"):
    fn = getattr(torch, name)
    case(f"torch.{name}", fn, lambda m, a, b, fn=fn: torch.where(fn(a, b), a, b))
    case(f"method {name}", m_(name), lambda m, a, b, name=name: torch.where(getattr(a, name)(0.1), a, b))

# -- along one axis ------------------------------------------------------------------------------
for fn in (F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax):
    case(f"{fn.__module__}.{fn.__name__}", fn, lambda m, a, b, fn=fn: fn(a, 1))
    case(f"{fn.__module__}.{fn.__name__} keyword", fn, lambda m, a, b, fn=fn: fn(a, dim=-1))
case("method softmax", m_("softmax"), lambda m, a, b: a.softmax(1))
case("method log_softmax", m_("log_softmax"), lambda m, a, b: a.log_softmax(dim=2))
case("F.normalize", F.normalize, lambda m, a, b: F.normalize(a, dim=1))
case("F.normalize p", F.normalize, lambda m, a, b: F.normalize(a, 1.0, 3))
for cls, make in {
    nn.Softmax: lambda: nn.Softmax(1),
    nn.LogSoftmax: lambda: nn.LogSoftmax(dim=1),
    nn.Softmin: lambda: nn.Softmin(-1),
    nn.Softmax2d: nn.Softmax2d,
}.items():
    case(f"module {cls.__name__}", cls, lambda m, a, b: m.mods["op"](a), modules={"op": make})

# -- pass-through ----------------------------------------------------------------------------------
for fn, src, prep in (
    (F.dropout, "img", lambda a: a),
    (F.dropout1d, "line", lambda a: a),
    (F.dropout2d, "img", lambda a: a),
    (F.dropout3d, "img", lambda a: a.unsqueeze(2)),
    (F.alpha_dropout, "img", lambda a: a),
):
    case(f"F.{fn.__name__}", fn, lambda m, a, b, fn=fn, prep=prep: fn(prep(a), 0.0), src=src)
case("F.dropout keyword", F.dropout, lambda m, a, b: F.dropout(a, p=0.0, training=m.training))
case("torch.clone", torch.clone, lambda m, a, b: torch.clone(a))
for name in ("contiguous", "clone", "detach", "cpu"):
    case(f"method {name}", m_(name), lambda m, a, b, name=name: getattr(a, name)())
for name in ("float", "half", "bfloat16"):
    case(f"method {name}", (m_(name), m_("double")), lambda m, a, b, name=name: getattr(a, name)().double())
case("method to dtype", m_("to"), lambda m, a, b: a.to(torch.float64))
case("method to tensor", m_("to"), lambda m, a, b: a.to(b))
case("method type", m_("type"), lambda m, a, b: a.type(torch.float64))
case("method type_as", m_("type_as"), lambda m, a, b: a.type_as(b))
case("operator.pos", operator.pos, lambda m, a, b: +a)  # export: aten.positive
for name in ("positive", "resolve_conj", "resolve_neg"):
    case(f"torch.{name}", getattr(torch, name), lambda m, a, b, name=name: getattr(torch, name)(a))
    case(f"method {name}", m_(name), lambda m, a, b, name=name: getattr(a, name)())
case("method requires_grad_", m_("requires_grad_"), lambda m, a, b: a + a.detach().requires_grad_(False))
case("method cuda", m_("cuda"), lambda m, a, b: a.cuda().cpu(), requires="cuda")
for cls, make in {
    nn.Identity: nn.Identity,
    nn.Dropout: lambda: nn.Dropout(0.5),
    nn.Dropout1d: lambda: nn.Dropout1d(0.5),
    nn.Dropout2d: lambda: nn.Dropout2d(0.5),
    nn.Dropout3d: lambda: nn.Dropout3d(0.5),
    nn.AlphaDropout: lambda: nn.AlphaDropout(0.5),
}.items():
    src = "line" if cls is nn.Dropout1d else "img"
    prep = (lambda a: a.unsqueeze(2)) if cls is nn.Dropout3d else (lambda a: a)
    case(
        f"module {cls.__name__}",
        cls,
        lambda m, a, b, prep=prep: m.mods["op"](prep(a)),
        src=src,
        modules={"op": make},
    )

# -- attention and matrix products --------------------------------------------------------------


def _heads(m, a):
    """(N, 4 tokens, C) -> q, k, v as (N, 2 heads, 4, 3)."""
    q, k, v = m.mods["qkv"](a).reshape(a.shape[0], 4, 3, 2, 3).permute(2, 0, 3, 1, 4)
    return q, k, v


_QKV = {"qkv": lambda: nn.Linear(C, 3 * C)}
sdpa = F.scaled_dot_product_attention
case("sdpa", sdpa, lambda m, a, b: sdpa(*_heads(m, a)), src="seq", modules=_QKV)
case(
    "sdpa keyword",
    sdpa,
    lambda m, a, b: sdpa(*_heads(m, a)[:2], value=_heads(m, a)[2], scale=0.3),
    src="seq",
    modules=_QKV,
)
case("sdpa causal", sdpa, lambda m, a, b: sdpa(*_heads(m, a), is_causal=True), src="seq", modules=_QKV)
case(
    "sdpa mask",
    sdpa,
    lambda m, a, b: sdpa(*_heads(m, a), attn_mask=m.b_mask),
    src="seq",
    modules=_QKV,
    buffers={"mask": lambda: torch.rand(4, 4) > 0.3},
)
case("sdpa over channels", sdpa, lambda m, a, b: sdpa(a, b, b), expect="any")
case(
    "matmul by a parameter",
    torch.matmul,
    lambda m, a, b: torch.matmul(a, m.params["w"]),
    src="seq",
    params={"w": (C, 4)},
)
case("@ by a parameter", operator.matmul, lambda m, a, b: a @ m.params["w"], src="seq", params={"w": (C, 4)})
case("@ attention", operator.matmul, lambda m, a, b: (a @ b.transpose(1, 2)).softmax(-1) @ b, src="seq")
case(
    "method matmul",
    m_("matmul"),
    lambda m, a, b: a.transpose(1, 2).matmul(m.params["w"]).sum(-1),
    src="seq",
    params={"w": (4, 4)},
)
case(
    "explicit __matmul__",
    operator.matmul,
    lambda m, a, b: a.__matmul__(m.params["w"]),
    src="seq",
    params={"w": (C, 4)},
)
case("torch.bmm", torch.bmm, lambda m, a, b: torch.bmm(a, b.transpose(1, 2)), src="seq")
case(
    "method bmm",
    m_("bmm"),
    lambda m, a, b: a.bmm(m.params["w"].expand(a.shape[0], C, 2)),
    src="seq",
    params={"w": (1, C, 2)},
)
case(
    "torch.addmm (GPT-2 Conv1D)",
    torch.addmm,
    lambda m, a, b: torch.addmm(m.params["b"], a, m.params["w"]),
    src="vec",
    params={"w": (C, 4), "b": (4,)},
)
case(
    "torch.addmm keyword",
    torch.addmm,
    lambda m, a, b: torch.addmm(m.params["b"], a, m.params["w"], beta=0.5, alpha=2),
    src="vec",
    params={"w": (C, 4), "b": (4,)},
)
case("torch.baddbmm", torch.baddbmm, lambda m, a, b: torch.baddbmm(a, a, b.transpose(1, 2) @ b), src="seq")

# -- reductions -----------------------------------------------------------------------------------
REDUCE_FORMS = {
    "spatial": (lambda r: lambda m, a, b: r(a, dim=(2, 3)), "free"),
    "keepdim": (lambda r: lambda m, a, b: a * r(a, dim=2, keepdim=True), "free"),
    "channel keyword": (lambda r: lambda m, a, b: a * r(a, dim=1, keepdim=True), "free"),
}
ONE_DIM = {"prod"}  # reductions over one axis at a time
for name in ("sum", "mean", "amax", "amin", "var", "std", "norm", "logsumexp", "prod", "nansum", "nanmean"):
    fn = getattr(torch, name)
    for form, (make, expect) in REDUCE_FORMS.items():
        if name in ONE_DIM and form == "spatial":
            continue
        case(f"torch.{name} {form}", fn, make(fn), expect=expect)
        meth = lambda x, *a, name=name, **k: getattr(x, name)(*a, **k)  # noqa: E731
        case(f"method {name} {form}", m_(name), make(meth), expect=expect)
for name in ("sum", "mean", "prod", "nansum", "amax"):
    case(f"method {name} full", m_(name), lambda m, a, b, name=name: a * getattr(a, name)())
case("var positional (dim, unbiased, keepdim)", m_("var"), lambda m, a, b: a.var(2, True, False))
case("var correction", torch.var, lambda m, a, b: torch.var(a, dim=(2, 3), correction=0))
case("norm positional (p, dim)", m_("norm"), lambda m, a, b: a.norm(2, 1))
case("norm fro two dims", torch.norm, lambda m, a, b: torch.norm(a, p="fro", dim=(2, 3)))
case("amax empty dims", torch.amax, lambda m, a, b: a * torch.amax(a, dim=()))
for fn, meth in ((torch.max, "max"), (torch.min, "min")):
    case(f"torch.{meth}(a, b)", fn, lambda m, a, b, fn=fn: fn(a, b))
    case(f"torch.{meth}(a, dim) values", fn, lambda m, a, b, fn=fn: fn(a, 2)[0])
    case(
        f"torch.{meth} over channels",
        fn,
        lambda m, a, b, fn=fn: fn(a, dim=1, keepdim=True).values * b,
        expect="fixed",
    )
    case(f"torch.{meth} full", fn, lambda m, a, b, fn=fn: a * fn(a))
    case(f"method {meth}(b)", m_(meth), lambda m, a, b, meth=meth: getattr(a, meth)(b))
    case(f"method {meth}(dim)", m_(meth), lambda m, a, b, meth=meth: getattr(a, meth)(3).values)
    case(
        f"method {meth}(indices)",
        m_(meth),
        lambda m, a, b, meth=meth: a + getattr(a, meth)(1, keepdim=True)[1],
        expect="fixed",
    )

# -- shapes -----------------------------------------------------------------------------------------
case("method view", m_("view"), lambda m, a, b: a.view(a.size(0), -1))
case("method view tuple", m_("view"), lambda m, a, b: a.view((N, C, 25)))
case("method view heads", m_("view"), lambda m, a, b: a.view(N, 2, 3, 25).transpose(1, 2))
case("method view dtype", m_("view"), lambda m, a, b: a.double().view(torch.int64).double(), expect="fixed")
case("method reshape", m_("reshape"), lambda m, a, b: a.reshape(N, -1))
case("method reshape shape", m_("reshape"), lambda m, a, b: a.reshape(shape=(N, C, 5, 5)))
case("method flatten", m_("flatten"), lambda m, a, b: a.flatten(2))
case("method flatten keyword", m_("flatten"), lambda m, a, b: a.flatten(start_dim=1, end_dim=2))
case("method unflatten", m_("unflatten"), lambda m, a, b: a.unflatten(1, (2, 3)))
case("method view_as", m_("view_as"), lambda m, a, b: a.flatten(2).view_as(b))
case("method reshape_as", m_("reshape_as"), lambda m, a, b: a.flatten(2).reshape_as(b))
case("torch.reshape", torch.reshape, lambda m, a, b: torch.reshape(a, (N, -1)))
case("torch.flatten", torch.flatten, lambda m, a, b: torch.flatten(a, 1))
case("torch.unflatten", torch.unflatten, lambda m, a, b: torch.unflatten(a, 1, (3, 2)))
case("module Flatten", nn.Flatten, lambda m, a, b: m.mods["op"](a), modules={"op": nn.Flatten})
case(
    "module Unflatten",
    nn.Unflatten,
    lambda m, a, b: m.mods["op"](a),
    modules={"op": lambda: nn.Unflatten(1, (2, 3))},
)
case("method permute", m_("permute"), lambda m, a, b: a.permute(0, 2, 3, 1))
case("method permute tuple", m_("permute"), lambda m, a, b: a.permute((0, 3, 1, 2)))
case("method permute keyword", m_("permute"), lambda m, a, b: a.permute(dims=(0, 2, 1, 3)))
case("torch.permute", torch.permute, lambda m, a, b: torch.permute(a, (0, 2, 3, 1)))
for fn in (torch.transpose, torch.swapaxes, torch.swapdims):
    case(f"torch.{fn.__name__}", fn, lambda m, a, b, fn=fn: fn(a, 1, 3))
for name in ("transpose", "swapaxes", "swapdims"):
    case(f"method {name}", m_(name), lambda m, a, b, name=name: getattr(a, name)(1, -1))
case("transpose keyword", m_("transpose"), lambda m, a, b: a.transpose(dim0=1, dim1=2))
for fn in (torch.movedim, torch.moveaxis):
    case(f"torch.{fn.__name__}", fn, lambda m, a, b, fn=fn: fn(a, 1, -1))
    case(
        f"method {fn.__name__}", m_(fn.__name__), lambda m, a, b, n=fn.__name__: getattr(a, n)((1, 2), (3, 1))
    )
case("torch.t", torch.t, lambda m, a, b: torch.t(a) @ b, src="vec", expect="any")
case("method t", m_("t"), lambda m, a, b: m.params["w"] @ a.t(), src="vec", params={"w": (4, C)})
case("torch.adjoint", torch.adjoint, lambda m, a, b: torch.adjoint(a))
case(
    "method adjoint",
    m_("adjoint"),
    lambda m, a, b: a @ m.params["w"].adjoint(),
    src="vec",
    params={"w": (4, C)},
)
case("torch.unsqueeze", torch.unsqueeze, lambda m, a, b: torch.unsqueeze(a, 2))
case("method unsqueeze", m_("unsqueeze"), lambda m, a, b: a.unsqueeze(-1))
case("torch.squeeze", torch.squeeze, lambda m, a, b: torch.squeeze(a.unsqueeze(2), 2))
case("method squeeze", m_("squeeze"), lambda m, a, b: a.unsqueeze(0).squeeze())
case("method squeeze dims", m_("squeeze"), lambda m, a, b: a[:, :, None, :1].squeeze((2, 3)))
case("method expand", m_("expand"), lambda m, a, b: a.mean(1, keepdim=True).expand(-1, 4, -1, -1))
case(
    "method expand param",
    m_("expand"),
    lambda m, a, b: a + m.params["s"].expand(C, 5, 5),
    params={"s": (C, 1, 1)},
)
case(
    "method expand_as",
    m_("expand_as"),
    lambda m, a, b: m.params["s"].expand_as(a) * a,
    params={"s": (C, 1, 1)},
)
case(
    "torch.broadcast_to",
    torch.broadcast_to,
    lambda m, a, b: torch.broadcast_to(m.params["s"], a.shape) + a,
    params={"s": (C, 1, 1)},
)
case(
    "method broadcast_to", m_("broadcast_to"), lambda m, a, b: a.sum(2, keepdim=True).broadcast_to(N, C, 5, 5)
)
case("method repeat", m_("repeat"), lambda m, a, b: a.repeat(1, 2, 1, 1))
case("method repeat list", m_("repeat"), lambda m, a, b: a.repeat([2, 1, 1, 1]))
case("torch.tile", torch.tile, lambda m, a, b: torch.tile(a, (1, 2, 1, 1)))
case("method tile", m_("tile"), lambda m, a, b: a.tile((2,)))
case("method repeat_interleave", m_("repeat_interleave"), lambda m, a, b: a.repeat_interleave(2, dim=1))
case("torch.repeat_interleave", torch.repeat_interleave, lambda m, a, b: torch.repeat_interleave(a, 3, 1))
case(
    "repeat_interleave tensor repeats",
    torch.repeat_interleave,
    lambda m, a, b: torch.repeat_interleave(a, m.b_r, 1),
    expect="fixed",
    buffers={"r": lambda: torch.tensor([1, 2, 1, 1, 2, 1])},
)
for fn in (torch.flip, torch.roll, torch.cumsum, torch.cumprod):
    name = fn.__name__
    over_channels = {"flip": lambda a: torch.flip(a, [1]), "roll": lambda a: torch.roll(a, 1, 1)}
    over_channels |= {"cumsum": lambda a: torch.cumsum(a, 1), "cumprod": lambda a: torch.cumprod(a, dim=1)}
    over_space = {"flip": lambda a: a.flip(2), "roll": lambda a: a.roll(1, 3)}
    over_space |= {"cumsum": lambda a: a.cumsum(2), "cumprod": lambda a: a.cumprod(dim=3)}
    case(f"torch.{name} over channels", fn, lambda m, a, b, f=over_channels[name]: f(a), expect="fixed")
    case(f"method {name} over space", m_(name), lambda m, a, b, f=over_space[name]: f(a))
case("roll without dims", m_("roll"), lambda m, a, b: a.roll(2), expect="fixed")
case("torch.cat", torch.cat, lambda m, a, b: torch.cat([a, b], 1))
case("torch.cat keyword", torch.cat, lambda m, a, b: torch.cat((a, b[:, :2]), dim=1))
case("torch.cat spatial", torch.cat, lambda m, a, b: torch.cat([a, b], dim=-1))
case("torch.concat", torch.concat, lambda m, a, b: torch.concat([b, a], 1))
case("torch.stack", torch.stack, lambda m, a, b: torch.stack([a, b], 1))
case("torch.stack last", torch.stack, lambda m, a, b: torch.stack((a, b), dim=-1))
case("torch.split", torch.split, lambda m, a, b: torch.split(a, 2, dim=1)[1])
case("method split sections", m_("split"), lambda m, a, b: torch.cat(a.split([2, 4], 1)[::-1], 1))
case("torch.chunk", torch.chunk, lambda m, a, b: torch.chunk(a, 2, 1)[0] * torch.chunk(a, 2, 1)[1])
case("method chunk", m_("chunk"), lambda m, a, b: a.chunk(3, dim=1)[2])
case("torch.tensor_split", torch.tensor_split, lambda m, a, b: torch.tensor_split(a, 3, dim=1)[0])
case("method tensor_split", m_("tensor_split"), lambda m, a, b: a.tensor_split([1, 4], 1)[1])
case("torch.unbind channels", torch.unbind, lambda m, a, b: torch.unbind(a, 1)[0], expect="fixed")
case("method unbind space", m_("unbind"), lambda m, a, b: a.unbind(dim=2)[1])
case("method unfold", m_("unfold"), lambda m, a, b: a.unfold(2, 2, 1))

# -- indexing and metadata ------------------------------------------------------------------------
case("slice", operator.getitem, lambda m, a, b: a[:, :4] + b[:, 2:])
case("slice keeps all", operator.getitem, lambda m, a, b: a[:, :, 1:, :-1])
case("index picks one unit", operator.getitem, lambda m, a, b: a[:, 1], expect="fixed")
case("torch.narrow", torch.narrow, lambda m, a, b: torch.narrow(a, 1, 2, 3))
case("method narrow", m_("narrow"), lambda m, a, b: a.narrow(-1, 1, 3) + b.narrow(dim=-1, start=0, length=3))
case("narrow negative start", m_("narrow"), lambda m, a, b: a.narrow(1, -4, 2))
case("ellipsis and None", operator.getitem, lambda m, a, b: a[..., None, 1:])
case("strided slice", operator.getitem, lambda m, a, b: a[:, ::2], expect="fixed")
case(
    "index tensor",
    operator.getitem,
    lambda m, a, b: a[:, m.b_idx],
    expect="fixed",
    buffers={"idx": lambda: torch.tensor([0, 2, 1])},
)
case(
    "index tensor along positions",
    operator.getitem,
    lambda m, a, b: a[:, m.b_idx] + b[..., m.b_idx, :],
    src="seq",
    buffers={"idx": lambda: torch.tensor([0, 2, 1, 1, 3])},
)
case(
    "lookup table along units",  # Swin's relative position bias: a table of per-unit rows
    operator.getitem,
    lambda m, a, b: a + m.params["table"][m.b_pos].T[None, :, :, None],
    params={"table": (7, C)},
    buffers={"pos": lambda: torch.tensor([3, 0, 6, 2, 2])},
)
case(
    "boolean mask",
    operator.getitem,
    lambda m, a, b: a[:, m.b_keep],
    expect="fixed",
    buffers={"keep": lambda: torch.tensor([True, False] * 3)},
)
case("tuple output", operator.getitem, lambda m, a, b: a.max(2)[0])
case("shape attribute", getattr, lambda m, a, b: a.reshape(a.shape[0], -1))
case("T attribute", getattr, lambda m, a, b: m.params["w"] @ a.T, src="vec", params={"w": (4, C)})
case("mT attribute", getattr, lambda m, a, b: (a.mT @ b).flatten(1), src="seq", expect="any")
case("mT attribute of a batch", getattr, lambda m, a, b: a.mT)  # export: aten.mT
case("H attribute", getattr, lambda m, a, b: m.params["w"] @ a.H, src="vec", params={"w": (4, C)})
case("mH attribute", getattr, lambda m, a, b: a.mH)  # export: aten.mH
# a transposed weight is a layer: its outputs are units (export: aten.numpy_T, aten.matrix_H)
case("T attribute of a weight", getattr, lambda m, a, b: a @ m.params["w"].T, src="vec", params={"w": (4, C)})
case("H attribute of a weight", getattr, lambda m, a, b: a @ m.params["w"].H, src="vec", params={"w": (4, C)})
case("Ellipsis index", operator.getitem, lambda m, a, b: a[...])  # export: aten.alias
for name in ("size", "dim", "numel", "nelement", "ndimension", "get_device"):
    case(
        f"method {name}",
        m_(name),
        lambda m, a, b, name=name: a * (getattr(a, name)() if name != "size" else a.size(1)),
    )

# -- spatial ops -------------------------------------------------------------------------------------
POOL_MODULES = {
    nn.MaxPool1d: (lambda: nn.MaxPool1d(2), "line"),
    nn.AvgPool1d: (lambda: nn.AvgPool1d(2), "line"),
    nn.AdaptiveAvgPool1d: (lambda: nn.AdaptiveAvgPool1d(3), "line"),
    nn.AdaptiveMaxPool1d: (lambda: nn.AdaptiveMaxPool1d(2), "line"),
    nn.LPPool1d: (lambda: nn.LPPool1d(2, 2), "line"),
    nn.MaxPool2d: (lambda: nn.MaxPool2d(2), "img"),
    nn.AvgPool2d: (lambda: nn.AvgPool2d(3, 1, 1), "img"),
    nn.AdaptiveAvgPool2d: (lambda: nn.AdaptiveAvgPool2d(1), "img"),
    nn.AdaptiveMaxPool2d: (lambda: nn.AdaptiveMaxPool2d((2, 3)), "img"),
    nn.LPPool2d: (lambda: nn.LPPool2d(2, 2), "img"),
    nn.MaxPool3d: (lambda: nn.MaxPool3d((1, 2, 2)), "img"),
    nn.AvgPool3d: (lambda: nn.AvgPool3d((1, 2, 2)), "img"),
    nn.AdaptiveAvgPool3d: (lambda: nn.AdaptiveAvgPool3d((1, 2, 2)), "img"),
    nn.AdaptiveMaxPool3d: (lambda: nn.AdaptiveMaxPool3d(1), "img"),
    nn.Upsample: (lambda: nn.Upsample(scale_factor=2), "img"),
    nn.UpsamplingNearest2d: (lambda: nn.UpsamplingNearest2d(scale_factor=2), "img"),
    nn.UpsamplingBilinear2d: (lambda: nn.UpsamplingBilinear2d(size=(3, 4)), "img"),
}
for cls, (make, src) in POOL_MODULES.items():
    three_d = cls.__name__.endswith("3d")
    op = (lambda m, a, b: m.mods["op"](a.unsqueeze(2))) if three_d else (lambda m, a, b: m.mods["op"](a))
    case(f"module {cls.__name__}", cls, op, src=src, modules={"op": make})
case(
    "module MaxPool2d unbatched",
    nn.MaxPool2d,
    lambda m, a, b: m.mods["op"](a[0])[None],
    modules={"op": lambda: nn.MaxPool2d(2)},
)
case(
    "module MaxPool2d over channels",
    nn.MaxPool2d,
    lambda m, a, b: m.mods["op"](a[:, :, 0])[None],
    modules={"op": lambda: nn.MaxPool2d(2)},
    expect="fixed",
)
case(
    "module MaxPool1d return_indices",
    nn.MaxPool1d,
    lambda m, a, b: m.mods["op"](a)[1] * 1.0 + m.mods["op"](a)[0],
    src="line",
    modules={"op": lambda: nn.MaxPool1d(2, return_indices=True)},
)
POOL_FUNCTIONS = {
    F.max_pool1d: ((2,), "line"),
    F.avg_pool1d: ((2,), "line"),
    F.adaptive_avg_pool1d: ((2,), "line"),
    F.adaptive_max_pool1d: ((3,), "line"),
    F.lp_pool1d: ((2.0, 2), "line"),
    F.max_pool2d: ((2,), "img"),
    F.avg_pool2d: ((2,), "img"),
    F.adaptive_avg_pool2d: ((1,), "img"),
    F.adaptive_max_pool2d: ((2,), "img"),
    F.lp_pool2d: ((2.0, 2), "img"),
    F.max_pool3d: (((1, 2, 2),), "img"),
    F.avg_pool3d: (((1, 2, 2),), "img"),
    F.adaptive_avg_pool3d: ((1,), "img"),
    F.adaptive_max_pool3d: (((1, 2, 2),), "img"),
}
for fn, (extra, src) in POOL_FUNCTIONS.items():
    three_d = fn.__name__.endswith("3d")
    case(
        f"F.{fn.__name__}",
        fn,
        lambda m, a, b, fn=fn, extra=extra, three_d=three_d: fn(a.unsqueeze(2) if three_d else a, *extra),
        src=src,
    )
for fn in (
    F.max_pool1d,
    F.adaptive_max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool3d,
):
    # fx records the function torch's boolean dispatch chooses: F.max_pool2d_with_indices
    with_indices = getattr(F, f"{fn.__name__}_with_indices")
    src, three_d = ("line" if "1d" in fn.__name__ else "img"), "3d" in fn.__name__
    case(
        f"F.{fn.__name__} return_indices",
        with_indices,
        lambda m, a, b, fn=fn, three_d=three_d: fn(a.unsqueeze(2) if three_d else a, 1, return_indices=True)[
            0
        ],
        src=src,
    )
case(
    "F.avg_pool2d keyword", F.avg_pool2d, lambda m, a, b: F.avg_pool2d(a, kernel_size=3, stride=1, padding=1)
)
case("F.interpolate", F.interpolate, lambda m, a, b: F.interpolate(a, scale_factor=2))
case("F.interpolate bilinear", F.interpolate, lambda m, a, b: F.interpolate(a, size=(3, 3), mode="bilinear"))
case("F.pad", F.pad, lambda m, a, b: F.pad(a, (1, 1)))
case("F.pad reflect", F.pad, lambda m, a, b: F.pad(a, (1, 1, 2, 0), mode="reflect"))
case("F.pad channels", F.pad, lambda m, a, b: F.pad(a, (0, 0, 0, 0, 1, 1)), expect="fixed")
PAD_MODULES = {
    nn.ZeroPad1d: ("line", lambda: nn.ZeroPad1d(1)),
    nn.ZeroPad2d: ("img", lambda: nn.ZeroPad2d((1, 0, 0, 1))),
    nn.ZeroPad3d: ("img", lambda: nn.ZeroPad3d((1, 1, 1, 1, 0, 0))),
    nn.ConstantPad1d: ("line", lambda: nn.ConstantPad1d(2, 0.5)),
    nn.ConstantPad2d: ("img", lambda: nn.ConstantPad2d(1, -1.0)),
    nn.ConstantPad3d: ("img", lambda: nn.ConstantPad3d((1, 1, 0, 0, 0, 0), 0.0)),
    nn.ReflectionPad1d: ("line", lambda: nn.ReflectionPad1d(2)),
    nn.ReflectionPad2d: ("img", lambda: nn.ReflectionPad2d(1)),
    nn.ReflectionPad3d: ("img", lambda: nn.ReflectionPad3d((1, 1, 1, 1, 0, 0))),
    nn.ReplicationPad1d: ("line", lambda: nn.ReplicationPad1d(1)),
    nn.ReplicationPad2d: ("img", lambda: nn.ReplicationPad2d(2)),
    nn.ReplicationPad3d: ("img", lambda: nn.ReplicationPad3d(1)),
    nn.CircularPad1d: ("line", lambda: nn.CircularPad1d(1)),
    nn.CircularPad2d: ("img", lambda: nn.CircularPad2d(1)),
    nn.CircularPad3d: ("img", lambda: nn.CircularPad3d((1, 1, 1, 1, 0, 0))),
}
for cls, (src, make) in PAD_MODULES.items():
    three_d = cls.__name__.endswith("3d")
    op = (lambda m, a, b: m.mods["op"](a.unsqueeze(2))) if three_d else (lambda m, a, b: m.mods["op"](a))
    case(f"module {cls.__name__}", cls, op, src=src, modules={"op": make})

# -- constants ---------------------------------------------------------------------------------------
case("torch.zeros_like", torch.zeros_like, lambda m, a, b: a + torch.zeros_like(b))
case("torch.ones_like", torch.ones_like, lambda m, a, b: a * torch.ones_like(a[:, :1]))
case("torch.full_like", torch.full_like, lambda m, a, b: torch.cat([a, torch.full_like(b, 2.0)], 1))
case("torch.zeros", torch.zeros, lambda m, a, b: a + torch.zeros(a.shape, dtype=a.dtype))
case("torch.ones", torch.ones, lambda m, a, b: a * torch.ones(N, C, 1, 1, dtype=a.dtype))
case("torch.full", torch.full, lambda m, a, b: a + torch.full((C, 5, 5), 0.5, dtype=a.dtype))
case("method new_zeros", m_("new_zeros"), lambda m, a, b: a + a.new_zeros(a.shape))
case("method new_ones", m_("new_ones"), lambda m, a, b: a * a.new_ones(N, 1, 5, 5))
case("method new_full", m_("new_full"), lambda m, a, b: a - a.new_full((C, 1, 1), 0.25))
case("torch.empty_like", torch.empty_like, lambda m, a, b: torch.cat([a, torch.empty_like(b)[:, :0]], 1))
case("torch.empty", torch.empty, lambda m, a, b: torch.cat([a, torch.empty(N, 0, 5, 5, dtype=a.dtype)], 1))
case("method new_empty", m_("new_empty"), lambda m, a, b: torch.cat([a, a.new_empty(N, 0, 5, 5)], 1))
case("method new_tensor", m_("new_tensor"), lambda m, a, b: a * a.new_tensor(2.0))
case("torch._assert", torch._assert, lambda m, a, b: (torch._assert(a.dim() == 4, "4-d"), a)[1])

# -- layers -------------------------------------------------------------------------------------------
LAYERS = {
    nn.Conv1d: ("line", lambda: nn.Conv1d(C, 4, 3, padding=1), lambda x: x),
    nn.Conv2d: ("img", lambda: nn.Conv2d(C, 4, 3, padding=1), lambda x: x),
    nn.Conv3d: ("img", lambda: nn.Conv3d(C, 4, (1, 3, 3), padding=(0, 1, 1)), lambda x: x.unsqueeze(2)),
    nn.ConvTranspose1d: ("line", lambda: nn.ConvTranspose1d(C, 4, 2, stride=2), lambda x: x),
    nn.ConvTranspose2d: ("img", lambda: nn.ConvTranspose2d(C, 4, 3), lambda x: x),
    nn.ConvTranspose3d: ("img", lambda: nn.ConvTranspose3d(C, 4, (1, 2, 2)), lambda x: x.unsqueeze(2)),
    nn.Linear: ("seq", lambda: nn.Linear(C, 4), lambda x: x),
    nn.BatchNorm1d: ("vec", lambda: nn.BatchNorm1d(C), lambda x: x),
    nn.BatchNorm2d: ("img", lambda: nn.BatchNorm2d(C), lambda x: x),
    nn.BatchNorm3d: ("img", lambda: nn.BatchNorm3d(C), lambda x: x.unsqueeze(2)),
    nn.SyncBatchNorm: ("img", lambda: nn.SyncBatchNorm(C), lambda x: x),
    nn.InstanceNorm1d: (
        "line",
        lambda: nn.InstanceNorm1d(C, affine=True, track_running_stats=True),
        lambda x: x,
    ),
    nn.InstanceNorm2d: ("img", lambda: nn.InstanceNorm2d(C, affine=True), lambda x: x),
    nn.InstanceNorm3d: ("img", lambda: nn.InstanceNorm3d(C), lambda x: x.unsqueeze(2)),
    nn.LayerNorm: ("seq", lambda: nn.LayerNorm(C), lambda x: x),
    nn.RMSNorm: ("seq", lambda: nn.RMSNorm(C), lambda x: x),
    nn.GroupNorm: ("img", lambda: nn.GroupNorm(2, C), lambda x: x),
}
for cls, (src, make, prep) in LAYERS.items():
    case(
        f"module {cls.__name__}",
        cls,
        lambda m, a, b, prep=prep: m.mods["op"](prep(a)),
        src=src,
        modules={"op": make},
    )
case(
    "grouped conv",
    nn.Conv2d,
    lambda m, a, b: m.mods["op"](a),
    modules={"op": lambda: nn.Conv2d(C, 4, 1, groups=2)},
)
case(
    "depthwise conv",
    nn.Conv2d,
    lambda m, a, b: m.mods["op"](a),
    modules={"op": lambda: nn.Conv2d(C, 2 * C, 3, groups=C)},
)
case(
    "conv unbatched",
    nn.Conv2d,
    lambda m, a, b: m.mods["op"](a[0])[None],
    modules={"op": lambda: nn.Conv2d(C, 4, 1)},
)
case(
    "instance norm unbatched",
    nn.InstanceNorm1d,
    lambda m, a, b: m.mods["op"](a[0])[None],
    src="line",
    modules={"op": lambda: nn.InstanceNorm1d(C, affine=True)},
)
case(
    "layer norm two axes",
    nn.LayerNorm,
    lambda m, a, b: m.mods["op"](a),
    modules={"op": lambda: nn.LayerNorm([5, 5])},
    expect="any",
)
case(
    "layer norm channels last",
    nn.LayerNorm,
    lambda m, a, b: m.mods["op"](a.permute(0, 2, 3, 1)),
    modules={"op": lambda: nn.LayerNorm(C)},
)
case(
    "module Bilinear",
    nn.Bilinear,
    lambda m, a, b: m.mods["op"](a, b),
    src="vec",
    modules={"op": lambda: nn.Bilinear(C, C, 4)},
)
case(
    "module Embedding",
    nn.Embedding,
    lambda m, x, _: m.mods["op"](x),
    ids=True,
    modules={"op": lambda: nn.Embedding(10, C)},
    expect="any",
)
for cls in (nn.LSTM, nn.GRU, nn.RNN):
    case(
        f"module {cls.__name__}",
        cls,
        lambda m, a, b: m.mods["op"](a)[0],
        src="seq",
        modules={"op": lambda cls=cls: cls(C, 4, batch_first=True)},
    )
    case(
        f"module {cls.__name__} two layers bidirectional",
        cls,
        lambda m, a, b: m.mods["op"](a.transpose(0, 1))[0],
        src="seq",
        modules={"op": lambda cls=cls: cls(C, 4, num_layers=2, bidirectional=True)},
    )
    case(
        f"module {cls.__name__} final state",
        cls,
        lambda m, a, b: m.mods["op"](a)[1][0] if isinstance(m.mods["op"], nn.LSTM) else m.mods["op"](a)[1],
        src="seq",
        modules={"op": lambda cls=cls: cls(C, 4, num_layers=2, batch_first=True)},
    )
case(
    "LSTM projections",
    nn.LSTM,
    lambda m, a, b: m.mods["op"](a)[0],
    src="seq",
    modules={"op": lambda: nn.LSTM(C, 4, proj_size=3, batch_first=True)},
)
case(
    "LSTM zero initial state",
    (nn.LSTM, m_("new_zeros"), torch.zeros_like),
    lambda m, a, b: m.mods["op"](a, (a.new_zeros(1, 4, 4), torch.zeros_like(a[:1, :, :4])))[0],
    src="seq",
    modules={"op": lambda: nn.LSTM(C, 4)},
)
case(
    "GRU given state",
    nn.GRU,
    lambda m, a, b: m.mods["op"](a, b[:, :1].transpose(0, 1).contiguous())[0],
    src="seq",
    modules={"op": lambda: nn.GRU(C, C, batch_first=True)},
)


def _lstm_steps(m, a, b):
    h = c = a.new_zeros(N, 4)
    for t in range(3):
        h, c = m.mods["op"](a[:, t], (h, c))
    return h


def _cell_steps(m, a, b):
    h = m.mods["op"](a[:, 0])
    for t in range(1, 3):
        h = m.mods["op"](a[:, t], h)
    return h


case("module LSTMCell", nn.LSTMCell, _lstm_steps, src="seq", modules={"op": lambda: nn.LSTMCell(C, 4)})
case("module GRUCell", nn.GRUCell, _cell_steps, src="seq", modules={"op": lambda: nn.GRUCell(C, 4)})
case("module RNNCell", nn.RNNCell, _cell_steps, src="seq", modules={"op": lambda: nn.RNNCell(C, 4)})
case(
    "module MultiheadAttention",
    nn.MultiheadAttention,
    lambda m, a, b: m.mods["op"](a, a, a, need_weights=False)[0],
    src="seq",
    modules={"op": lambda: nn.MultiheadAttention(C, 2, batch_first=True)},
)
case(
    "MultiheadAttention weights and cross attention",
    nn.MultiheadAttention,
    lambda m, a, b: torch.cat([m.mods["op"](a, b, b)[0], m.mods["op"](a, b, b)[1]], -1),
    src="seq",
    modules={"op": lambda: nn.MultiheadAttention(C, 3, batch_first=True)},
)
case(
    "MultiheadAttention over channels, causal",
    nn.MultiheadAttention,
    lambda m, a, b: m.mods["op"](
        a.transpose(1, 2), b.transpose(1, 2), b.transpose(1, 2), is_causal=True, attn_mask=m.b_mask
    )[0],
    src="seq",
    modules={"op": lambda: nn.MultiheadAttention(4, 2, batch_first=True)},
    buffers={"mask": lambda: torch.triu(torch.ones(C, C, dtype=torch.bool), 1)},
    expect="fixed",
)

# -- layers called as functions ----------------------------------------------------------------------
case(
    "F.linear",
    F.linear,
    lambda m, a, b: F.linear(a, m.params["w"], m.params["b"]),
    src="seq",
    params={"w": (4, C), "b": (4,)},
)
case(
    "F.linear keyword",
    F.linear,
    lambda m, a, b: F.linear(input=a, weight=m.params["w"]),
    src="seq",
    params={"w": (4, C)},
)
case(
    "F.conv1d",
    F.conv1d,
    lambda m, a, b: F.conv1d(a, m.params["w"], m.params["b"]),
    src="line",
    params={"w": (4, C, 3), "b": (4,)},
)
case("F.conv2d", F.conv2d, lambda m, a, b: F.conv2d(a, m.params["w"], padding=1), params={"w": (4, C, 3, 3)})
case(
    "F.conv2d depthwise",
    F.conv2d,
    lambda m, a, b: F.conv2d(a, m.params["w"], groups=C),
    params={"w": (C, 1, 3, 3)},
)
case(
    "F.conv2d same",
    F.conv2d,
    lambda m, a, b: F.conv2d(a, m.params["w"], None, 1, "same"),
    params={"w": (4, C, 3, 3)},
)
case(
    "F.conv3d",
    F.conv3d,
    lambda m, a, b: F.conv3d(a.unsqueeze(2), m.params["w"]),
    params={"w": (4, C, 1, 2, 2)},
)
case(
    "F.batch_norm",
    F.batch_norm,
    lambda m, a, b: F.batch_norm(a, m.b_rm, m.b_rv, m.params["w"], m.params["b"], training=False),
    params={"w": (C,), "b": (C,)},
    buffers={"rm": lambda: torch.randn(C), "rv": lambda: torch.rand(C) + 0.5},
)
case(
    "F.instance_norm",
    F.instance_norm,
    lambda m, a, b: F.instance_norm(a, weight=m.params["w"], bias=m.params["b"]),
    params={"w": (C,), "b": (C,)},
)
case(
    "F.layer_norm",
    F.layer_norm,
    lambda m, a, b: F.layer_norm(a, (C,), m.params["w"], m.params["b"]),
    src="seq",
    params={"w": (C,), "b": (C,)},
)
case(
    "F.rms_norm",
    F.rms_norm,
    lambda m, a, b: F.rms_norm(a, [C], weight=m.params["w"]),
    src="seq",
    params={"w": (C,)},
)
case(
    "F.group_norm",
    F.group_norm,
    lambda m, a, b: F.group_norm(a, 3, m.params["w"], m.params["b"]),
    params={"w": (C,), "b": (C,)},
)
case(
    "F.embedding",
    F.embedding,
    lambda m, x, _: F.embedding(x, m.params["w"]),
    ids=True,
    params={"w": (10, C)},
    expect="any",
)
case("F.prelu", F.prelu, lambda m, a, b: F.prelu(a, m.params["w"]), params={"w": (C,)})


def _library_cases() -> None:
    from timm.layers import BatchNormAct2d, Conv2dSame, ScaledStdConv2dSame, StdConv2dSame
    from torchvision.ops import StochasticDepth, stochastic_depth

    # torchvision wraps the function for fx where its module calls it
    case(
        "torchvision stochastic_depth",
        stochastic_depth,
        lambda m, a, b: m.mods["op"](a) + b,
        modules={"op": lambda: StochasticDepth(0.5, "row")},
    )
    case(
        "timm BatchNormAct2d",
        BatchNormAct2d,
        lambda m, a, b: m.mods["op"](a),
        modules={"op": lambda: BatchNormAct2d(C)},
    )
    case(
        "timm BatchNormAct2d with PReLU",
        BatchNormAct2d,
        lambda m, a, b: m.mods["op"](a),
        modules={"op": lambda: BatchNormAct2d(C, act_layer=lambda **k: nn.PReLU(C))},
        expect="fixed",
    )
    for cls in (Conv2dSame, StdConv2dSame, ScaledStdConv2dSame):
        case(
            f"timm {cls.__name__}",
            cls,
            lambda m, a, b: m.mods["op"](a),
            modules={"op": lambda cls=cls: cls(C, 4, 3, stride=2)},
        )


_library_cases()
