"""The fx capture path: how modeconn turns a model into a torch.fx graph, in one place.

A module is a leaf (not traced into) when a permutation rule knows its type, when timm says
not to trace it (``timm.layers.register_notrace_module``), when it has forward hooks (fx would
trace its ``forward`` without them; as a leaf without a rule it is fixed instead), or when
fx's default says so (``torch.nn`` modules). timm's autowrapped functions are kept as single
graph nodes.

The graph's inputs are the forward parameters the caller gives (positionally, or by name as a
dict); every other parameter keeps its default, as in an ordinary call. ``forward`` is called
as written, decorators included (every Hugging Face model decorates it).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any

import torch.fx as fx
import torch.nn as nn

from modeconn.capture.inputs import ModelInputs
from modeconn.errors import TraceError
from modeconn.modules import unknown_hooks

__all__ = ["ModeconnTracer", "trace", "graph_name", "kept_whole", "LAYER"]


def _timm_policy() -> tuple[set[type], set[Callable]]:
    try:
        import timm.layers._fx as timm_fx
    except ImportError:  # pragma: no cover - timm is a dependency, but keep the policy optional
        return set(), set()
    return set(timm_fx.get_notrace_modules()), set(timm_fx.get_notrace_functions())


def kept_whole(fn: Any) -> bool:
    """Whether torch.fx records calls to ``fn`` without tracing into it (timm's notrace functions)."""
    try:
        return fn in _timm_policy()[1]
    except TypeError:  # unhashable
        return False


class ModeconnTracer(fx.Tracer):
    """fx tracer whose leaves are the modules modeconn has rules for, plus timm's policy; the
    graph's placeholders are the given inputs' parameters."""

    # Buffers are graph attributes like parameters: by default fx evaluates ``self.buf.view(...)``
    # once and stores the result as a constant, which would hide that it follows the buffer.
    proxy_buffer_attributes = True

    def __init__(
        self, is_rule_leaf: Callable[[nn.Module], bool], inputs: ModelInputs, opaque: Mapping[int, str] = {}
    ):
        timm_modules, timm_functions = _timm_policy()
        super().__init__(autowrap_functions=tuple(f for f in timm_functions if callable(f)))
        self._is_rule_leaf = is_rule_leaf
        self._timm_modules = timm_modules
        self._inputs = inputs
        self._opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if (
            self._is_rule_leaf(m)
            or type(m) in self._timm_modules
            or unknown_hooks(m)
            or id(m) in self._opaque
        ):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # Placeholders for the given inputs only, and forward called with them as the user
        # would: defaults apply to the rest, and a decorated forward runs its decorator
        # (fx's own version patches the decorator's code object, which breaks on *args/**kwargs).
        proxies = [self.create_proxy("placeholder", name, (), {}) for name in self._inputs.names]
        k = self._inputs.num_positional
        positional, by_name = proxies[:k], dict(zip(self._inputs.names[k:], proxies[k:]))

        def call_forward(root: nn.Module) -> Any:
            return root_fn(root, *positional, **by_name)

        return call_forward, [self.root]


LAYER = "layer"
"""The name a model that is itself one leaf layer (``nn.LSTM``) has inside its traced graph."""


class _OneLayer(nn.Module):
    """A model that is one leaf layer (a rule knows its type, or it has hooks), wrapped so that
    fx traces a call to it instead of its insides."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.add_module(LAYER, layer)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, LAYER)(*args, **kwargs)


def graph_name(gm: fx.GraphModule, target: str) -> str:
    """The model's own name for a module or tensor that ``gm`` calls ``target``."""
    if not gm.meta.get("one_layer"):
        return target
    return "" if target == LAYER else target.removeprefix(f"{LAYER}.")


MAX_OPAQUE = 64
"""How many submodules that fx cannot trace into may be kept whole before tracing gives up."""


def trace(model: nn.Module, is_rule_leaf: Callable[[nn.Module], bool], inputs: ModelInputs) -> fx.GraphModule:
    """Trace ``model`` in its current mode, called with ``inputs``.

    A submodule whose code fx cannot trace (data-dependent control flow, a proxy used as an
    int) is kept whole, as a leaf without a rule — discovery then fixes what it touches — and
    ``gm.meta["opaque"]`` says why, by module name. A failure in the model's own forward is a
    :class:`TraceError` that names the culprit and the remedies. A model that is itself a leaf
    is traced as one call (:func:`graph_name` maps its names)."""
    one_layer = is_rule_leaf(model) or bool(unknown_hooks(model))
    root = _OneLayer(model) if one_layer else model
    names = {id(m): name for name, m in model.named_modules()}
    opaque: dict[int, str] = {}
    while True:
        tracer = ModeconnTracer(is_rule_leaf, inputs, opaque)
        try:
            graph = tracer.trace(root)
            break
        except Exception as e:
            owner = _module_owning(model, e)
            module = model.get_submodule(owner) if owner else None
            if module is None or id(module) in opaque or len(opaque) >= MAX_OPAQUE:
                raise TraceError(_explain_trace_failure(model, e)) from e
            opaque[id(module)] = (
                f"torch.fx cannot trace its code ({type(e).__name__}: {str(e).splitlines()[0]})"
            )
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["one_layer"] = one_layer
    gm.meta["opaque"] = {names[i]: why for i, why in opaque.items()}
    return gm


_INTERNAL_FILES = ("/torch/fx/", "/torch/_", "/torch/nn/modules/module.py", "/modeconn/capture/")


def _explain_trace_failure(model: nn.Module, error: Exception) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    culprit = "?"
    for frame in reversed(frames):
        if not any(part in frame.filename for part in _INTERNAL_FILES):
            culprit = f"{frame.name} ({frame.filename}:{frame.lineno}: {frame.line})"
            break
    owner = _module_owning(model, error)
    if owner is None:
        where = "the model"
    else:
        where = (
            f"module {owner!r} ({type(model.get_submodule(owner)).__name__})"
            if owner
            else "the model's own forward"
        )
    return (
        f"torch.fx could not trace {type(model).__name__}: {type(error).__name__}: {error}\n"
        f"  it broke in {where}, at {culprit}\n"
        f"  remedies: make that module a leaf by registering a permutation rule for its type "
        f"(hook modeconn_register_rules) or with timm.layers.register_notrace_module; wrap the "
        f"function with torch.fx.wrap; or remove data-dependent control flow."
    )


def _module_owning(model: nn.Module, error: Exception) -> str | None:
    """The qualified name of the deepest module whose own code is on the failing stack (found
    by the ``self`` of each frame, so that modules sharing a file are told apart)."""
    names = {id(m): name for name, m in model.named_modules()}
    owner = None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        this = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None  # a method's self
        filename = code.co_filename
        if id(this) in names and not any(part in filename for part in _INTERNAL_FILES):
            owner = names[id(this)]
        tb = tb.tb_next
    return owner
