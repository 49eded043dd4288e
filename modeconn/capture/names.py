"""Readable names for what a graph node calls: ``torch.nn.functional.relu``, ``Tensor.view``,
``aten.linear``, ``operator.add``."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

__all__ = ["node_place", "op_name", "target_name"]


def target_name(node: fx.Node) -> str:
    """A readable name for a node's op: ``torch.cumsum``, ``Tensor.view``, ``operator.add``."""
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, str):
        return t
    return op_name(t)


def node_place(node: fx.Node) -> str:
    """Where a node's op runs, for messages: ``"aten.mul at node 'mul_3' in `layers.0.attn`"``
    (the innermost module whose forward called it, as both captures record it; nothing more at
    the model's top level)."""
    place = f"{target_name(node)} at node {node.name!r}"
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return place
    path, _ = list(stack.values())[-1]
    path = str(path).removeprefix("L['self'].").removeprefix("L__self__.")
    return f"{place} in `{path}`" if path else place


def op_name(t: Any) -> str:
    """A readable, importable-looking name for a function or class (``torch.nn.functional.relu``;
    ``aten.linear`` for torch.export's ATen ops, every overload)."""
    if isinstance(t, torch._ops.OpOverload):
        t = t.overloadpacket
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name.replace("::", ".")
    module = getattr(t, "__module__", None) or ""
    name = getattr(t, "__qualname__", None) or getattr(t, "__name__", repr(t))
    if "<locals>" in name or name.startswith("_"):  # boolean_dispatch wrappers, torch._VariableFunctionsClass
        name = getattr(t, "__name__", name)
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module == "builtins":
        return name
    if module.startswith("torch._C") or module in ("torch._VariableFunctionsClass",):
        module = "torch"
    if module.startswith("torch.nn.functional"):
        module = "torch.nn.functional"
    elif module.startswith("torch.nn.modules."):  # torch.nn.modules.conv.Conv2d is torch.nn.Conv2d
        module = "torch.nn"
    return f"{module}.{name}" if module else name
