"""Normalized call arguments: what a graph node's arguments mean, by parameter name.

fx records a call as it was written: ``h.norm(2, 1)``, ``torch.norm(h, p=2, dim=1)`` and
``torch.max(a, b)`` (elementwise) against ``torch.max(a, 1)`` (a reduction) are different
argument lists. Rules must not guess which parameter a position is, so every call is matched
against its op's signature first — TorchScript schemas for torch builtins (overloads told
apart by the argument types seen in the recorded run, through
``torch.fx.operator_schemas.normalize_function``), ``inspect.signature`` for Python functions
and modules — and rules read the result by name. A call that matches no signature, or several,
is not understood, and the rule that needs it treats the node as unsupported.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import operator
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.operator_schemas import normalize_function

__all__ = ["Arguments", "ArgumentsNotUnderstood", "normalize", "python_type"]


class ArgumentsNotUnderstood(Exception):
    """A call whose arguments cannot be matched to exactly one signature of its op."""


_MISSING = object()


class Arguments(Mapping):
    """A call's arguments by parameter name, defaults filled in.

    Values are what the graph holds: ``fx.Node`` for computed values, constants otherwise.
    The first tensor parameter is always called ``"input"`` (``self`` of a method, ``tensor``
    of ``torch.split``, ...). ``overload`` names the parameters of the matched signature, so
    rules tell overloads apart by what they contain (``"other" in args``).
    """

    def __init__(self, values: dict[str, Any], where: str, complete: bool = True):
        self._values = values
        self._where = where
        self.complete = complete  # False when only the input is known (ops without a schema)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise ArgumentsNotUnderstood(
                f"{self._where} has no argument {name!r} in the signature it matched "
                f"({', '.join(self._values) or 'none'})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Arguments({self._values!r})"


_INPUT_ALIASES = ("self", "tensor", "a", "x", "inp", "input")

# Python operators have no schema; their operands by position.
_OPERATOR_PARAMS: dict[Callable, tuple[str, ...]] = {
    operator.getitem: ("input", "index"),
    operator.setitem: ("input", "index", "value"),
    operator.neg: ("input",),
    operator.pos: ("input",),
    operator.abs: ("input",),
    operator.invert: ("input",),
    operator.not_: ("input",),
}

# Methods whose Python form takes sizes as varargs (``x.view(2, 3)``) where the schema has a list.
_VARARG_METHODS = {"view", "reshape", "permute", "expand", "repeat", "tile", "flip", "new_zeros", "new_ones"}
_VARARG_METHODS |= {"new_empty", "new_full", "resize_", "size", "sum_to_size", "broadcast_to"}

# Dunder methods as fx records them (``x.__radd__(y)``): normalized like the plain op.
_DUNDER = {
    "__add__": "add",
    "__radd__": "add",
    "__iadd__": "add_",
    "__sub__": "sub",
    "__rsub__": "sub",
    "__mul__": "mul",
    "__rmul__": "mul",
    "__imul__": "mul_",
    "__truediv__": "div",
    "__rtruediv__": "div",
    "__matmul__": "matmul",
    "__rmatmul__": "matmul",
    "__neg__": "neg",
    "__pow__": "pow",
    "__rpow__": "pow",
}


def normalize(node: fx.Node, module: nn.Module | None, type_of: Callable[[Any], Any]) -> Arguments:
    """The arguments of ``node`` by parameter name; ``type_of`` gives the Python type of a raw
    argument in the recorded run (``torch.Tensor`` for tensors), to tell overloads apart.
    Raises :class:`ArgumentsNotUnderstood`."""
    where = _describe(node)
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_module":
        return _bind(_signature(module.forward), args, kwargs, where)
    if node.op == "call_method":
        return _method(node.target, args, kwargs, type_of, where)
    if node.op == "call_function":
        return _function(node.target, args, kwargs, type_of, where)
    raise ArgumentsNotUnderstood(f"{where} is not a call")


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    return f"{node.op} {target} at node {node.name!r}"


@functools.cache
def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


def _bind(sig: inspect.Signature, args: tuple, kwargs: dict, where: str) -> Arguments:
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ArgumentsNotUnderstood(f"{where}: {e}") from None
    bound.apply_defaults()
    return Arguments(_canonical(dict(bound.arguments)), where)


def _canonical(values: dict[str, Any]) -> dict[str, Any]:
    """The first parameter, when it is the tensor operated on, is called ``input``."""
    if values and "input" not in values:
        first = next(iter(values))
        if first in _INPUT_ALIASES:
            values = {("input" if k == first else k): v for k, v in values.items()}
    return values


def _function(target: Any, args: tuple, kwargs: dict, type_of, where: str) -> Arguments:
    if target in _OPERATOR_PARAMS or getattr(target, "__module__", None) in ("_operator", "operator"):
        names = _OPERATOR_PARAMS.get(target, ("input", "other", "third")[: len(args)])
        if kwargs or len(args) != len(names):
            raise ArgumentsNotUnderstood(f"{where}: {len(args)} operands")
        return Arguments(dict(zip(names, args)), where)
    if target is getattr:
        return Arguments(dict(zip(("input", "name", "default"), args)), where)
    if isinstance(target, (types.BuiltinFunctionType, torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        return _schema(target, args, kwargs, type_of, where)
    # Python functions; fx's normalization also knows torch's boolean-dispatch wrappers
    # (F.max_pool2d is ``fn(*args, **kwargs)`` choosing between two functions of one signature)
    try:
        pair = normalize_function(target, args, kwargs, normalize_to_only_use_kwargs=True)
    except Exception:
        pair = None
    if pair is not None:
        return Arguments(_canonical(dict(pair.kwargs)), where)
    try:
        sig = _signature(target)
    except (TypeError, ValueError):
        raise ArgumentsNotUnderstood(f"{where}: no signature") from None
    return _bind(sig, args, kwargs, where)


def _method(name: str, args: tuple, kwargs: dict, type_of, where: str) -> Arguments:
    if not args:
        raise ArgumentsNotUnderstood(f"{where}: a method call without its tensor")
    name = _DUNDER.get(name, name)
    python = inspect.getattr_static(torch.Tensor, name, None)
    if inspect.isfunction(python):  # methods written in Python (norm, split, unflatten, ...)
        return _bind(_signature(python), args, kwargs, where)
    op = _aten(name)
    if op is None:  # no schema (float, cuda, type, ...): only the tensor is known
        return Arguments({"input": args[0]}, where, complete=False)
    try:
        return _schema(op, args, kwargs, type_of, where)
    except ArgumentsNotUnderstood:
        if name not in _VARARG_METHODS or len(args) < 2:
            raise
    return _schema(op, (args[0], tuple(args[1:])), kwargs, type_of, where)  # x.view(2, 3)


@functools.cache
def _aten(name: str) -> Any:
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


# numpy spellings torch's argument parser accepts for its builtins
_KWARG_ALIASES = {"axis": "dim", "keepdims": "keepdim"}


def _schema(target: Any, args: tuple, kwargs: dict, type_of, where: str) -> Arguments:
    kwargs = {_KWARG_ALIASES.get(k, k): v for k, v in kwargs.items()}
    arg_types = tuple(type_of(a) for a in args)
    kwarg_types = {k: type_of(v) for k, v in kwargs.items()}
    try:
        pair = normalize_function(
            target, args, kwargs, arg_types, kwarg_types, normalize_to_only_use_kwargs=True
        )
    except Exception as e:  # ambiguous overloads, unsupported annotations
        raise ArgumentsNotUnderstood(f"{where}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if pair is None:
        raise ArgumentsNotUnderstood(f"{where}: the arguments match no signature of the op")
    return Arguments(_canonical(dict(pair.kwargs)), where)


def python_type(value: Any) -> Any:
    """The type used to choose an overload for a recorded value: tensors are recorded as their
    ``torch.Size``; sequences become ``list[T]`` when homogeneous."""
    if isinstance(value, torch.Size):
        return torch.Tensor
    if isinstance(value, (list, tuple)):
        inner = {python_type(v) for v in value}
        if len(inner) == 1:
            (t,) = inner
            return list[t] if isinstance(t, type) else list[Any]
        if inner <= {int, float, bool} and inner:
            return list[numbers.Number]
        return list[Any] if value else list[int]
    if isinstance(value, type):  # values discovery only records by type (modules, objects)
        return value
    return type(value)
