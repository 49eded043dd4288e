"""A model's graph, captured once and reused.

:func:`capture` turns a model into a torch.fx graph by symbolic tracing (``"fx"``) or by
``torch.export`` (``"export"``), in one mode, for one set of inputs. The :class:`Capture` it
returns serves again — with no new trace — wherever the graph is the same: for the same model
later (``discover`` then ``align``), and for another model of the same architecture (model B
of a pair), whose tensors are bound into the same graph (:meth:`Capture.graph_for`).

The graph is the same when the model's modules have the same classes and settings
(``extra_repr``) and its tensors the same names, shapes and dtypes, and when the inputs have
the same names and kinds — and, for ``torch.export``, which specializes a graph to its
inputs' shapes, the same shapes except the batch size and the length of integer inputs where
the graph was captured with more than one (export specializes a size of 1). Code that
branches on the values of weights would differ too; fx cannot trace it (it keeps such a module
whole and calls the model's own), and torch.export records the branch taken.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.capture.export import export_graph
from modeconn.capture.fx import graph_name, kept_whole, trace
from modeconn.capture.inputs import ModelInputs
from modeconn.capture.names import target_name
from modeconn.errors import TraceError
from modeconn.modules import modes_restored

__all__ = ["CAPTURES", "Capture", "Leaves", "capture", "captures_made", "structure_of"]

CAPTURES = ("auto", "fx", "export")
"""How a model's graph is captured: ``"fx"`` symbolic tracing, ``"export"`` ``torch.export``,
``"auto"`` fx first, and export where fx fails or keeps modules whole."""

_made: collections.Counter[str] = collections.Counter()


def captures_made() -> dict[str, int]:
    """How many graphs this process has captured, by how (``"fx"``, ``"export"``): what a
    benchmark or a test reads to count captures (reused ones are not counted)."""
    return dict(_made)


class Leaves(Protocol):
    """What the caller of :func:`capture` knows how to read whole (discovery: the modules and
    functions a permutation rule knows)."""

    def module(self, m: nn.Module) -> bool:
        """Whether fx keeps ``m`` as one call instead of tracing into it."""

    def function(self, node: fx.Node) -> bool:
        """Whether the call at ``node`` is understood (a function fx keeps whole that is not is
        reported in ``graph.meta["opaque"]``)."""


def structure_of(model: nn.Module) -> tuple:
    """What a captured graph depends on in a model besides its inputs: each module's class and
    settings, each tensor's name, shape and dtype."""
    modules = tuple((name, type(m), m.extra_repr()) for name, m in model.named_modules())
    tensors = tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in model.state_dict(keep_vars=True).items()
        if t is not None
    )
    return modules, tensors


def _signature(inputs: ModelInputs, how: str) -> tuple:
    def one(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return type(value)
        if how == "fx":  # a symbolic trace does not see shapes
            return (value.is_floating_point(), value.ndim)
        # export: the batch axis and every axis of an integer input are dynamic, unless
        # captured at size 1 (which export specializes)
        dynamic = range(value.ndim) if not value.is_floating_point() else range(min(1, value.ndim))
        shape = tuple(None if i in dynamic and n > 1 else n for i, n in enumerate(value.shape))
        return (value.dtype, shape)

    return inputs.names, inputs.num_positional, tuple(one(v) for v in inputs.values)


def _fits(signature: tuple, other: tuple) -> bool:
    names, positional, values = signature
    if (names, positional) != other[:2] or len(values) != len(other[2]):
        return False
    for mine, theirs in zip(values, other[2]):
        if isinstance(mine, tuple) and len(mine) == 2 and isinstance(mine[1], tuple):
            if not isinstance(theirs, tuple) or mine[0] != theirs[0] or len(mine[1]) != len(theirs[1]):
                return False
            if any(a is not None and a != b for a, b in zip(mine[1], theirs[1])):
                return False
        elif mine != theirs:
            return False
    return True


@dataclass(eq=False)
class Capture:
    """One captured graph: ``how`` it was captured (``"fx"`` or ``"export"``), in which mode
    (``training``), for which inputs, from which model. ``graph`` is the captured module of that
    model; :meth:`graph_for` gives the graph for any model it fits (:meth:`fits`)."""

    graph: fx.GraphModule
    how: str
    training: bool
    signature: tuple
    structure: tuple
    _model: Callable[[], nn.Module | None] = field(repr=False)

    def fits(self, model: nn.Module, inputs: ModelInputs, *, training: bool = False) -> str | None:
        """Why this graph is not ``model``'s for ``inputs`` in that mode, or ``None`` when it is."""
        if self.training != training:
            return f"it was captured in {'train' if self.training else 'eval'} mode"
        if not _fits(self.signature, _signature(inputs, self.how)):
            return f"it was captured for other inputs than {inputs.describe()}"
        if structure_of(model) != self.structure:
            return "the model's modules or tensors differ from those it was captured from"
        return None

    def graph_for(self, model: nn.Module) -> fx.GraphModule:
        """The graph run with ``model``'s own modules and tensors: the captured module itself for
        the model it was captured from, else the same graph bound to ``model`` (no new trace;
        check :meth:`fits` first). Constants of the capture (its guards, lifted literals) are
        shared."""
        if self._model() is model:
            return self.graph
        root: dict[str, Any] = {}
        for node in self.graph.graph.nodes:
            if node.op in ("get_attr", "call_module") and node.target not in root:
                own = _attribute(model, graph_name(self.graph, node.target))
                root[node.target] = own if own is not None else _attribute(self.graph, node.target)
        bound = fx.GraphModule(root, _copy(self.graph.graph), type(model).__name__)
        bound.meta.update(self.graph.meta)
        bound.train(self.training)
        return bound


def _attribute(owner: nn.Module, name: str) -> Any:
    value: Any = owner
    for part in name.split(".") if name else ():
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _copy(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` that another module may own (nodes and their meta copied shallowly)."""
    new = fx.Graph()
    new._codegen = graph._codegen  # export's pytree calling convention
    env: dict[fx.Node, fx.Node] = {}
    out = new.graph_copy(graph, env)
    new.output(out)
    return new


def capture(
    model: nn.Module, inputs: ModelInputs, *, how: str = "fx", training: bool = False, leaves: Leaves
) -> Capture:
    """``model``'s graph for ``inputs`` in eval (or train) mode, captured ``how`` (see
    :data:`CAPTURES`; for ``"auto"`` fx's, unless fx fails or keeps some module whole and
    torch.export captures the model). ``leaves`` says what fx keeps whole. The model's own mode
    is left as it was; ``capture.how`` says which path was taken."""
    if how not in CAPTURES:
        raise TraceError(f"capture must be one of {', '.join(CAPTURES)}, got {how!r}")
    if how == "auto":
        return _auto(model, inputs, training, leaves)
    with modes_restored(model):
        model.train(training)
        gm = export_graph(model, inputs) if how == "export" else _fx_graph(model, inputs, leaves)
    _made[how] += 1
    return Capture(gm, how, training, _signature(inputs, how), structure_of(model), weakref.ref(model))


def _fx_graph(model: nn.Module, inputs: ModelInputs, leaves: Leaves) -> fx.GraphModule:
    gm = trace(model, leaves.module, inputs)
    gm.meta["capture"] = "fx"
    for node in gm.graph.nodes:  # functions fx keeps whole that no rule knows: like opaque modules
        if node.op == "call_function" and kept_whole(node.target) and not leaves.function(node):
            gm.meta["opaque"].setdefault(
                target_name(node),
                "torch.fx keeps this function whole (timm's notrace list) and no rule knows it",
            )
    return gm


def _auto(model: nn.Module, inputs: ModelInputs, training: bool, leaves: Leaves) -> Capture:
    try:
        fx_capture = capture(model, inputs, how="fx", training=training, leaves=leaves)
    except TraceError as e:
        fx_capture, fx_failure = None, str(e)
    else:
        opaque = fx_capture.graph.meta["opaque"]
        if not opaque:
            return fx_capture
        fx_failure = "; ".join(f"{name!r}: {why}" for name, why in opaque.items())
    try:
        return capture(model, inputs, how="export", training=training, leaves=leaves)
    except TraceError as e:
        if fx_capture is not None:
            return fx_capture  # fx's graph, whose untraceable modules discovery fixes with the reason
        raise TraceError(f"neither capture path works.\nfx: {fx_failure}\nexport: {e}") from e
