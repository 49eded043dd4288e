"""Tracing policy: how modeconn turns a model into a torch.fx graph, in one place.

A module is a leaf (not traced into) when a permutation rule knows its type, when timm says
not to trace it (``timm.layers.register_notrace_module``), or when fx's default says so
(``torch.nn`` modules). timm's autowrapped functions are kept as single graph nodes.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from modeconn.errors import TraceError

__all__ = ["ModeconnTracer", "trace", "record_values", "modes_restored"]


def _timm_policy() -> tuple[set[type], set[Callable]]:
    try:
        import timm.layers._fx as timm_fx
    except ImportError:  # pragma: no cover - timm is a dependency, but keep the policy optional
        return set(), set()
    return set(timm_fx.get_notrace_modules()), set(timm_fx.get_notrace_functions())


class ModeconnTracer(fx.Tracer):
    """fx tracer whose leaves are the modules modeconn has rules for, plus timm's policy."""

    def __init__(self, is_rule_leaf: Callable[[nn.Module], bool]):
        timm_modules, timm_functions = _timm_policy()
        super().__init__(autowrap_functions=tuple(f for f in timm_functions if callable(f)))
        self._is_rule_leaf = is_rule_leaf
        self._timm_modules = timm_modules

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._is_rule_leaf(m) or type(m) in self._timm_modules:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _defaults_beyond(model: nn.Module, num_inputs: int) -> dict[str, Any]:
    """forward's parameters after the first ``num_inputs``, at their defaults: traced as
    constants, so that ``if mask is not None`` follows the call discovery actually makes."""
    params = list(inspect.signature(model.forward).parameters.values())
    out = {}
    for p in params[num_inputs:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            return {}  # a required input we were not given: let fx report it
        out[p.name] = p.default
    return out


def trace(model: nn.Module, is_rule_leaf: Callable[[nn.Module], bool], num_inputs: int = 1) -> fx.GraphModule:
    """Trace ``model`` in its current mode, called with ``num_inputs`` positional inputs (other
    forward parameters keep their defaults); fx failures become a :class:`TraceError` that names
    the module or function that broke the trace and the remedies."""
    tracer = ModeconnTracer(is_rule_leaf)
    try:
        graph = tracer.trace(model, concrete_args=_defaults_beyond(model, num_inputs) or None)
    except Exception as e:
        raise TraceError(_explain_trace_failure(model, e)) from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _explain_trace_failure(model: nn.Module, error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    culprit = "?"
    for frame in reversed(frames):
        if "/torch/fx/" not in frame.filename and "/torch/_" not in frame.filename:
            culprit = f"{frame.name} ({frame.filename}:{frame.lineno}: {frame.line})"
            break
    owner = _module_owning(model, frames)
    where = f"module {owner!r} ({type(model.get_submodule(owner)).__name__})" if owner else "the model"
    return (
        f"torch.fx could not trace {type(model).__name__}: {type(error).__name__}: {error}\n"
        f"  it broke in {where}, at {culprit}\n"
        f"  remedies: make that module a leaf by registering a permutation rule for its type "
        f"(hook modeconn_permutation_rules) or with timm.layers.register_notrace_module; wrap the "
        f"function with torch.fx.wrap; or remove data-dependent control flow."
    )


def _module_owning(model: nn.Module, frames: traceback.StackSummary) -> str | None:
    """The deepest submodule whose forward appears in the traceback."""
    files = {(f.filename, f.name) for f in frames if f.name == "forward"}
    best = None
    for name, m in model.named_modules():
        try:
            fn = type(m).forward
            key = (fn.__code__.co_filename, "forward")
        except AttributeError:
            continue
        if key in files and name and (best is None or name.count(".") >= best.count(".")):
            best = name
    return best


@contextlib.contextmanager
def modes_restored(model: nn.Module):
    """Restore every submodule's train/eval flag afterwards (mixed modes included)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _preserved_state(model: nn.Module):
    """Run something that may update buffers (train-mode BatchNorm) and undo it afterwards."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if v is not None}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                if k in saved:
                    v.copy_(saved[k])


def record_values(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Run the graph once and return, for every node, the structure of its output with tensors
    replaced by :class:`torch.Size` (other values are kept when they are small Python values)."""
    shapes: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            try:
                result = super().run_node(n)
            except Exception as e:
                raise TraceError(
                    f"the traced graph failed at node {n.format_node()}: {type(e).__name__}: {e}. "
                    f"Check that example_inputs have the shape the model expects."
                ) from e
            shapes[n.name] = map_aggregate(result, _summarize)
            return result

    # only a train-mode run changes buffers (BatchNorm statistics); eval needs no snapshot
    with _preserved_state(gm) if gm.training else torch.no_grad():
        Recorder(gm).run(*inputs)
    return shapes


def _summarize(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, slice)):
        return value
    return type(value)
