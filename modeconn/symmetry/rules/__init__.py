"""The built-in permutation rules, as one table: which rule handles which op.

Keys are ``nn.Module`` classes (``call_module`` nodes, most derived class first), callables
(``call_function`` nodes) and ``"method:<name>"`` strings (``call_method`` nodes). The rules
themselves live by op family: :mod:`.layers`, :mod:`.functional`, :mod:`.recurrent`,
:mod:`.attention`, :mod:`.shapes`, :mod:`.indexing`, :mod:`.reductions`, :mod:`.pooling`,
:mod:`.constants`, :mod:`.library`, on the helpers of :mod:`.common`; :mod:`.aten` maps the
ATen ops of ``torch.export`` graphs (keyed by overload packet) onto them. An op with no entry here
fixes every group it touches.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Hashable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn.symmetry.rules import (
    aten,
    attention,
    common,
    constants,
    functional,
    indexing,
    layers,
    library,
    pooling,
    recurrent,
    reductions,
    shapes,
)
from modeconn.symmetry.rules.common import activation, elementwise, metadata, passthrough

__all__ = ["builtin_rules", "TABLE", "common"]


def _methods(*names: str) -> tuple[str, ...]:
    return tuple(f"method:{n}" for n in names)


def _torch(*names: str) -> tuple[Callable, ...]:
    return tuple(getattr(torch, n) for n in names if hasattr(torch, n))


def _nn(*names: str) -> tuple[type, ...]:
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


def _f(*names: str) -> tuple[Callable, ...]:
    return tuple(getattr(F, n) for n in names if hasattr(F, n))


_UNARY = ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "sqrt", "rsqrt", "abs", "neg")
_UNARY += ("square", "sign", "erf", "log", "sin", "cos", "reciprocal", "clamp", "clamp_", "clip")
_BINARY = ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum")
_BINARY += (
    "masked_fill",
    "masked_fill_",
    "lerp",
    "where",
    "addcmul",
    "addcdiv",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
)
_REDUCTIONS = ("sum", "mean", "amax", "amin", "var", "std", "norm", "logsumexp", "prod", "nansum", "nanmean")

TABLE: tuple[tuple[Callable, tuple[Hashable, ...]], ...] = (
    # -- layers ------------------------------------------------------------------------------
    (layers.conv, _nn("Conv1d", "Conv2d", "Conv3d")),
    (layers.conv_transpose, _nn("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")),
    (layers.linear, _nn("Linear")),
    (layers.bilinear, _nn("Bilinear")),
    (layers.batch_norm, _nn("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")),
    (layers.instance_norm, _nn("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")),
    (layers.layer_norm, _nn("LayerNorm", "RMSNorm")),
    (layers.group_norm, _nn("GroupNorm")),
    (layers.prelu, _nn("PReLU")),
    (layers.embedding, _nn("Embedding")),
    (recurrent.recurrent, _nn("LSTM", "GRU", "RNN")),
    (recurrent.recurrent_cell, _nn("LSTMCell", "GRUCell", "RNNCell")),
    (attention.multihead_attention, _nn("MultiheadAttention")),
    (
        activation,
        _nn("ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish")
        + _nn("Hardsigmoid", "Sigmoid", "Tanh", "Softplus", "Hardtanh", "Softsign", "Tanhshrink")
        + _nn("LogSigmoid", "Softshrink", "Hardshrink", "Threshold"),
    ),
    (passthrough, _nn("Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")),
    (functional.along_axis, _nn("Softmax", "LogSoftmax", "Softmin", "Softmax2d")),
    (shapes.reshape, _nn("Flatten", "Unflatten")),
    (pooling.pool(1), _nn("MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d", "AdaptiveMaxPool1d", "LPPool1d")),
    (pooling.pool(2), _nn("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LPPool2d")),
    (pooling.pool(3), _nn("MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d", "AdaptiveMaxPool3d")),
    (pooling.resample, _nn("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d")),
    (
        pooling.pad_module,
        _nn("ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d")
        + _nn("ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d")
        + _nn("ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d"),
    ),
    # -- layers called as functions --------------------------------------------------------
    (functional.f_linear, (F.linear,)),
    (functional.f_conv, (F.conv1d, F.conv2d, F.conv3d)),
    (functional.f_batch_norm, (F.batch_norm, F.instance_norm)),
    (functional.f_layer_norm, _f("layer_norm", "rms_norm")),
    (functional.f_group_norm, (F.group_norm,)),
    (functional.f_embedding, (F.embedding,)),
    (functional.f_prelu, (F.prelu,)),
    (
        activation,
        _f("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "selu", "celu", "gelu", "silu")
        + _f("mish", "hardswish", "hardsigmoid", "softplus", "hardtanh", "softsign")
        + _f("logsigmoid", "tanhshrink", "softshrink", "hardshrink", "threshold")
        + _torch(*_UNARY),
    ),
    (activation, _methods(*_UNARY, "exp_", "sqrt_", "abs_", "neg_")),
    (
        elementwise,
        (operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod)
        + (operator.neg, operator.pow, operator.eq, operator.ne, operator.lt, operator.le, operator.gt)
        + (operator.ge,)
        + _torch(*_BINARY),
    ),
    (elementwise, _methods(*_BINARY)),
    (functional.along_axis, (F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax)),
    (functional.along_axis, (F.normalize, *_methods("softmax", "log_softmax"))),
    (passthrough, (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clone)),
    (passthrough, _methods("contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to")),
    (passthrough, _methods("type", "type_as", "requires_grad_", "cuda", "cpu")),
    (passthrough, (operator.pos, *_torch("positive", "resolve_conj", "resolve_neg"))),
    (passthrough, _methods("positive", "resolve_conj", "resolve_neg")),
    # -- attention and matrix products -----------------------------------------------------
    (attention.sdpa, (F.scaled_dot_product_attention,)),
    (attention.matmul, (torch.matmul, operator.matmul, torch.bmm, *_methods("matmul", "bmm"))),
    (attention.addmm, (torch.addmm, torch.baddbmm)),
    # -- reductions --------------------------------------------------------------------------
    (reductions.reduction, _torch(*_REDUCTIONS) + _methods(*_REDUCTIONS)),
    (reductions.extremum, (torch.max, torch.min, *_methods("max", "min"))),
    # -- shapes ------------------------------------------------------------------------------
    (shapes.reshape, _methods("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as")),
    (shapes.reshape, (torch.reshape, torch.flatten, torch.unflatten)),
    (shapes.permute_dims, (torch.permute, "method:permute")),
    (
        shapes.transpose,
        _torch("transpose", "swapaxes", "swapdims") + _methods("transpose", "swapaxes", "swapdims"),
    ),
    (shapes.movedim, _torch("movedim", "moveaxis") + _methods("movedim", "moveaxis")),
    (shapes.matrix_transpose, (torch.t, "method:t")),
    (shapes.swap_last_two, (torch.adjoint, "method:adjoint")),
    (shapes.unsqueeze, (torch.unsqueeze, "method:unsqueeze")),
    (shapes.squeeze, (torch.squeeze, "method:squeeze")),
    (shapes.expand, (torch.broadcast_to, *_methods("expand", "expand_as", "broadcast_to"))),
    (shapes.repeat, (torch.tile, *_methods("repeat", "tile"))),
    (shapes.repeat_interleave, (torch.repeat_interleave, "method:repeat_interleave")),
    (
        shapes.order_along,
        _torch("flip", "roll", "cumsum", "cumprod") + _methods("flip", "roll", "cumsum", "cumprod"),
    ),
    (shapes.cat, (torch.cat, torch.concat)),
    (shapes.stack, (torch.stack,)),
    (shapes.split, _torch("split", "chunk", "tensor_split") + _methods("split", "chunk", "tensor_split")),
    (shapes.unbind, (torch.unbind, "method:unbind")),
    (shapes.unfold, ("method:unfold",)),
    # -- indexing and metadata -------------------------------------------------------------
    (indexing.getitem, (operator.getitem,)),
    (indexing.narrow, (torch.narrow, "method:narrow")),
    (indexing.tensor_attribute, (builtins.getattr,)),
    (metadata, _methods("size", "dim", "numel", "nelement", "ndimension", "get_device")),
    # -- spatial ops -------------------------------------------------------------------------
    (
        pooling.pool(1),
        _f("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d", "lp_pool1d"),
    ),
    (
        pooling.pool(2),
        _f("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "lp_pool2d"),
    ),
    (pooling.pool(3), _f("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d")),
    # fx records the function torch's boolean dispatch chooses for return_indices=True
    (pooling.pool(1), _f("max_pool1d_with_indices", "adaptive_max_pool1d_with_indices")),
    (pooling.pool(2), _f("max_pool2d_with_indices", "adaptive_max_pool2d_with_indices")),
    (pooling.pool(3), _f("max_pool3d_with_indices", "adaptive_max_pool3d_with_indices")),
    (pooling.resample, (F.interpolate,)),
    (pooling.pad, (F.pad,)),
    # -- constants ---------------------------------------------------------------------------
    (constants.uniform_like, _torch("zeros_like", "ones_like", "full_like", "zeros", "ones", "full")),
    (constants.uniform_like, _methods("new_zeros", "new_ones", "new_full")),
    (constants.constant_like, (torch.empty_like, torch.empty, *_methods("new_empty", "new_tensor"))),
    (constants.noop, (torch._assert,)),
)
"""The built-in table: ``(rule, keys)`` pairs."""


def _library_table() -> Iterator[tuple[Callable, tuple[Hashable, ...]]]:
    """Rules for torchvision's and timm's own layers (each rule says why it is sound)."""
    try:
        from torchvision.ops import stochastic_depth

        yield library.stochastic_depth, (stochastic_depth,)
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.layers import BatchNormAct2d, Conv2dSame, ScaledStdConv2dSame, StdConv2dSame
    except ImportError:  # pragma: no cover
        return
    yield library.batch_norm_act, (BatchNormAct2d,)
    yield layers.conv, (Conv2dSame,)  # "same" padding is computed from the spatial sizes only
    yield library.std_conv, (StdConv2dSame, ScaledStdConv2dSame)


def builtin_rules() -> dict[Hashable, Callable]:
    """Every built-in key and its rule (a key torch exposes under two names appears once)."""
    out: dict[Hashable, Callable] = {}
    for rule, keys in (*TABLE, *_library_table(), *aten.aten_table()):
        for key in keys:
            out.setdefault(key, rule)
    return out
