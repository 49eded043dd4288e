"""The discovery pass: trace, run the rules over the graph, and build a PermutationSpec."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.errors import SymmetryError, TraceError, UnsupportedOpError
from modeconn.modules import device_of, float_dtype_of, modes_restored, unwrap
from modeconn.symmetry.arguments import ArgumentsNotUnderstood
from modeconn.symmetry.context import RuleContext, Unsupported, target_name, tensor_layouts
from modeconn.symmetry.export import CAPTURES, export_graph
from modeconn.symmetry.heads import head_groups
from modeconn.symmetry.parametrizations import derived_tensors, unknown_hooks
from modeconn.symmetry.spaces import Layout, SpaceGraph, TensorLayout
from modeconn.symmetry.spec import Fix, Group, PermutationSpec, Site, TensorSlice
from modeconn.symmetry.tracing import ModelInputs, graph_name, kept_whole, record_values, trace

__all__ = ["discover", "trace_model", "Rule", "model_inputs"]

Rule = Callable[[RuleContext], Any]

# What a subclass may redefine and still use its base's rule: nothing that runs in forward.
_INERT_METHODS = frozenset(
    {"__init__", "extra_repr", "reset_parameters", "__repr__", "_get_name"}
    | {"__setstate__", "__getstate__", "__deepcopy__", "__copy__", "__reduce__", "__reduce_ex__"}
)


def _inherits_forward(cls: type, base: type) -> bool:
    """Whether ``cls`` computes what ``base`` computes: no class between them defines a method
    that forward could call (``forward``, ``_conv_forward``, ...)."""
    for c in cls.__mro__:
        if c is base:
            return True
        for name, attr in vars(c).items():
            if callable(attr) and not isinstance(attr, type) and name not in _INERT_METHODS:
                return False
    return True


class _Discovery:
    """Mutable state of one discovery run over one or more traces of the same model."""

    def __init__(self, model: nn.Module, rules: dict[Hashable, Rule], strict: bool):
        self.model = model
        self.rules = rules
        self.strict = strict
        self.spaces = SpaceGraph()
        self.bindings: dict[tuple[str, int], Layout | None] = {}
        self.binding_where: dict[tuple[str, int], str] = {}
        self.binding_order: list[tuple[str, int]] = []
        self.sites: list[tuple[str, int, Layout, str]] = []
        self.reached: set[str] = set()
        state = model.state_dict(keep_vars=True)
        self.state_shapes = {k: tuple(v.shape) for k, v in state.items()}
        first: dict[int, str] = {}
        self.canonical = {name: first.setdefault(id(t), name) for name, t in state.items()}
        self.derived = derived_tensors(model, set(state))
        self.values: dict[str, Any] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.ann: dict[str, Any] = {}
        self.record_sites = True
        self.seen: list[TensorLayout] = []  # every node's layouts: head groups are checked on them
        self._use: set[tuple[str, int]] = set()  # (tensor, axis) bound while visiting one node
        self.gm: fx.GraphModule | None = None

    def name_of(self, target: str) -> str:
        """The model's name for a module or tensor of the graph being visited."""
        return graph_name(self.gm, target) if self.gm is not None else target

    # -- rule lookup -----------------------------------------------------------------------
    def module_rule(self, m: nn.Module) -> Rule | None:
        cls = type(m)
        for base in cls.__mro__:
            if base in self.rules:
                return self.rules[base] if base is cls or _inherits_forward(cls, base) else None
            if base is nn.Module:
                return None
        return None

    def node_rule(self, node: fx.Node) -> Rule | None:
        if node.op == "call_function" and isinstance(node.target, type) and issubclass(node.target, tuple):
            return _namedtuple  # building a (named) tuple of outputs is structure, not computation
        if node.op == "call_function":
            try:
                rule = self.rules.get(node.target)
            except TypeError:  # unhashable target
                return None
            if rule is None and isinstance(node.target, torch._ops.OpOverload):
                rule = self.rules.get(node.target.overloadpacket)  # torch.export's ATen ops
            return rule
        if node.op == "call_method":
            return self.rules.get(f"method:{node.target}")
        return None

    # -- bookkeeping -------------------------------------------------------------------------
    def bind(self, tensor: str, axis: int, layout: Layout | None, where: str) -> None:
        if tensor in self.derived:
            derived = self.derived[tensor]
            follows = derived.follow(axis, layout)
            if follows is None:
                fix = Fix("parametrization", f"`{tensor}` is {derived.why} ({where})", where)
                self.spaces.fix(layout, fix)
                return
            for name, ax, lay in follows:
                self.bind(name, ax, lay, f"{where}, through its {derived.why}")
            return
        if tensor not in self.canonical:
            why = f"`{tensor}` is computed, not a state-dict entry, so it cannot be permuted ({where})"
            self.spaces.fix(layout, Fix("parametrization", why, where))
            return
        tensor = self.canonical[tensor]
        self.reached.add(tensor)
        key = (tensor, axis)
        self._use.add(key)
        if key not in self.bindings:
            self.bindings[key] = layout
            self.binding_where[key] = where
            self.binding_order.append(key)
            return
        previous, before = self.bindings[key], self.binding_where[key]
        if (previous is None) != (layout is None) and before != where:
            permuting, keeping = (before, where) if layout is None else (where, before)
            why = f"tied tensor `{tensor}`: {permuting} permutes its axis {axis}, {keeping} may not"
            fix = Fix("tied", why, tensor)
        else:
            fix = Fix("constraint", f"shared tensor `{tensor}` (axis {axis}) in {where}", tensor)
        self.bindings[key] = self.spaces.merge(previous, layout, fix)

    def complete_use(self, module: nn.Module, prefix: str, where: str) -> None:
        """After a module's rule: every axis of its tensors that the rule did not bind is one that
        this use never permutes — which matters when the tensor is shared with another use."""
        for local, t in (*module.named_parameters(), *module.named_buffers()):
            name = f"{prefix}.{local}" if prefix else local
            if name not in self.canonical:
                continue
            canonical = self.canonical[name]
            self.reached.add(canonical)
            for axis, n in enumerate(t.shape):
                if n > 1 and (canonical, axis) not in self._use:
                    self.bind(name, axis, None, where)

    def unsupported(
        self, node: fx.Node, why: str, ctx: RuleContext | None = None, kind: str = "unsupported"
    ) -> Any:
        if self.strict:
            raise UnsupportedOpError(
                f"strict discovery: {why}: {node.format_node()}. Register a rule with the "
                f"modeconn_register_rules hook, or call discover(..., strict=False) to mark the "
                f"groups it touches as fixed."
            )
        module = self.gm.get_submodule(node.target) if node.op == "call_module" else None
        op = (
            f"{type(module).__name__} {self.name_of(node.target)!r}"
            if module is not None
            else target_name(node)
        )
        fix = Fix(kind, f"{op} at node {node.name!r}: {why}", op)
        for ta in tensor_layouts([self.ann_of(x) for x in (*node.args, *node.kwargs.values())]):
            for lay in ta.layouts:
                self.spaces.fix(lay, fix)
        for lay in ctx.touched if ctx is not None else ():
            self.spaces.fix(lay, fix)  # whatever a failed rule created or bound
        return _blank(self.values[node.name])

    def collapsed(self, a: Any, where: str) -> Any:
        """A node's layout as a rule that does not keep heads apart sees it (see
        :meth:`SpaceGraph.collapse`)."""
        if not isinstance(a, TensorLayout) or a.fold is None:
            return a
        fix = Fix("constraint", f"{where} uses every head's units alike, so heads share one permutation")
        return self.spaces.collapse(a, fix)

    def ann_of(self, x: Any) -> Any:
        if isinstance(x, fx.Node):
            return self.collapsed(self.ann.get(x.name), target_name(x))
        if isinstance(x, (list, tuple)):
            return [self.ann_of(a) for a in x]
        if isinstance(x, dict):
            return [self.ann_of(a) for a in x.values()]
        return None

    # -- the pass ---------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, inputs: ModelInputs, float_dtype: torch.dtype | None) -> None:
        self.gm = gm
        self.dtypes = {}
        self.values = record_values(gm, inputs, float_dtype, self.dtypes)
        self.ann = {}
        for node in gm.graph.nodes:
            self.ann[node.name] = self.visit(gm, node)
            self.seen.extend(tensor_layouts(self.ann[node.name]))

    def visit(self, gm: fx.GraphModule, node: fx.Node) -> Any:
        value = self.values[node.name]
        if node.op == "placeholder":
            return _blank(value)  # model inputs are never permuted
        if node.op == "output":
            fix = Fix("output", "model output")
            for ta in tensor_layouts(self.ann_of(node.args[0])):
                for lay in ta.layouts:
                    self.spaces.fix(lay, fix)
            return None
        if node.op == "get_attr":
            return self.get_attr(node, value)
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        self._use = set()
        try:
            return self._apply_rule(node, module, value)
        finally:
            if module is not None:
                name = self.name_of(node.target)
                self.complete_use(module, name, f"{type(module).__name__} {name!r}")

    def _apply_rule(self, node: fx.Node, module: nn.Module | None, value: Any) -> Any:
        if module is not None and unknown_hooks(module):
            hooks = ", ".join(unknown_hooks(module))
            return self.unsupported(
                node, f"forward hooks ({hooks}) change what the module computes", kind="parametrization"
            )
        rule = self.module_rule(module) if module is not None else self.node_rule(node)
        if rule is None:
            why = (
                self.gm.meta.get("opaque", {}).get(self.name_of(node.target)) if module is not None else None
            )
            return self.unsupported(node, why or "no permutation rule")
        ctx = RuleContext(self, node, module)
        try:
            result = rule(ctx)
            problem = _structure_problem(result, value)
            if problem:
                raise SymmetryError(f"the rule returned {problem}")
            return result
        except UnsupportedOpError:
            raise
        except Unsupported as e:
            return self.unsupported(node, str(e), ctx)
        except ArgumentsNotUnderstood as e:
            return self.unsupported(node, f"call form not understood ({e})", ctx)
        except Exception as e:  # a rule that breaks never leaves a half-declared group behind
            return self.unsupported(node, f"its rule failed ({type(e).__name__}: {e})", ctx)

    def get_attr(self, node: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Size):
            return None
        name = self.name_of(node.target)
        if name not in self.canonical:
            return TensorLayout(
                value
            )  # a constant fx made: it cannot be permuted, so neither can what it couples
        layouts = []
        for axis, n in enumerate(value):
            if n == 1:
                layouts.append(None)
                continue
            lay = ((self.spaces.new(n, name, producer=False), 1),)
            self.bind(name, axis, lay, f"attribute {name}")
            layouts.append(lay)
        return TensorLayout(value, layouts)


def _namedtuple(ctx: RuleContext) -> tuple:
    return tuple(ctx.ann(a) for a in (*ctx.node.args, *ctx.node.kwargs.values()))


def _blank(value: Any) -> Any:
    """A layout with no permutable axes for a recorded value (structure kept)."""
    if isinstance(value, torch.Size):
        return TensorLayout(value)
    if isinstance(value, (list, tuple)):
        return (list if isinstance(value, list) else tuple)(_blank(v) for v in value)
    if isinstance(value, dict):
        return {k: _blank(v) for k, v in value.items()}
    return None


def _structure_problem(result: Any, value: Any) -> str | None:
    """Why a rule's result does not describe the recorded value, or ``None`` if it does: every
    tensor needs a TensorLayout of its shape (a tensor described as a constant would hide
    whatever permutation it carries)."""
    if isinstance(value, torch.Size):
        if not isinstance(result, TensorLayout):
            return f"{type(result).__name__} for a tensor of shape {tuple(value)}"
        if result.shape != tuple(value):
            return f"a layout of shape {result.shape} for a tensor of shape {tuple(value)}"
        return None
    if isinstance(value, (list, tuple)):
        if not _holds_tensor(value):
            return None
        if not isinstance(result, (list, tuple)) or len(result) != len(value):
            return f"{type(result).__name__} for a sequence of {len(value)} values"
        return next((p for r, v in zip(result, value) if (p := _structure_problem(r, v))), None)
    if isinstance(value, dict):
        if not _holds_tensor(value):
            return None
        if not isinstance(result, dict) or set(result) != set(value):
            return f"{type(result).__name__} for a dict of {len(value)} values"
        return next((p for k, v in value.items() if (p := _structure_problem(result[k], v))), None)
    return None


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Size):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


# -- spec construction --------------------------------------------------------------------------


def _build_spec(d: _Discovery, model: nn.Module, capture: str) -> PermutationSpec:
    sp = d.spaces
    aliases: dict[str, list[str]] = {}
    for name, canonical in d.canonical.items():
        aliases.setdefault(canonical, []).append(name)
    heads = {id(h.root): h for h in head_groups(sp, d.seen, d.bindings, d.state_shapes, d.sites, sp.fences)}

    # Classes in the order their first tensor binding appears; names from producer labels.
    classes: dict[int, dict] = {}

    def cls_of(leaf) -> dict:
        root = sp.find(leaf)
        if id(root) not in classes:
            classes[id(root)] = {"root": root, "size": leaf.size, "slices": [], "sites": [], "leaves": []}
        entry = classes[id(root)]
        if leaf not in entry["leaves"]:
            entry["leaves"].append(leaf)
        return entry

    for tensor, axis in d.binding_order:
        layout = d.bindings[(tensor, axis)]
        if layout is None:
            continue
        pos = 0
        for leaf, inner in sp.resolve(layout):
            entry = cls_of(leaf)
            for alias in aliases[tensor]:
                entry["slices"].append(TensorSlice(alias, axis, pos, inner))
            pos += leaf.size * inner
    for node, axis, layout, kind in d.sites:
        pos = 0
        for leaf, inner in sp.resolve(layout):
            root = sp.find(leaf)
            if id(root) in classes:
                classes[id(root)]["sites"].append(Site(node, axis, pos, inner, kind))
            pos += leaf.size * inner

    groups: dict[str, Group] = {}

    def unique(name: str) -> str:
        base, k = name, 2
        while name in groups:
            name, k = f"{base}#{k}", k + 1
        return name

    for entry in classes.values():
        root = entry["root"]
        if id(root) in heads:  # a tensor along a heads axis: it moves with the heads
            heads[id(root)].slices += entry["slices"]
            heads[id(root)].sites += entry["sites"]
            continue
        producers = [leaf for leaf in entry["leaves"] if leaf.producer] or entry["leaves"]
        first = min(producers, key=lambda s: s.uid)
        # a piece of a split space is named by its unit range within the original space
        name = (
            first.label
            if first.split_from is None
            else f"{first.label}[{first.start}:{first.start + first.size}]"
        )
        name = unique(name)
        fixes = tuple(root.fixed)
        if not fixes and not root.has_producer:
            fixes = (
                Fix("no_layer", "not tied to any layer's units (a parameter axis that nothing permutes)"),
            )
        elif not fixes and entry["size"] == 1:
            fixes = (Fix("single_unit", "a single unit"),)
        groups[name] = Group(
            name=name,
            size=entry["size"],
            permutable=not fixes,
            fixes=fixes,
            slices=tuple(dict.fromkeys(entry["slices"])),
            sites=tuple(dict.fromkeys(entry["sites"])),
            hidden=root.has_producer and not any(f.kind == "output" for f in fixes),
        )
    for h in heads.values():
        name = unique(h.label)
        slices = [
            TensorSlice(alias, sl.axis, sl.start, sl.inner)
            for sl in h.slices
            for alias in aliases.get(sl.tensor, [sl.tensor])
        ]
        groups[name] = Group(
            name=name,
            size=h.size,
            permutable=not h.fixes,
            fixes=tuple(h.fixes),
            slices=tuple(dict.fromkeys(slices)),
            sites=tuple(dict.fromkeys(h.sites)),
            hidden=False,
            kind="heads",
        )
    unreached = {
        name: "not used by the traced forward passes (eval and train mode); never permuted"
        for name, canonical in d.canonical.items()
        if canonical not in d.reached
    }
    return PermutationSpec(groups=groups, unreached=unreached, model=type(model).__name__, capture=capture)


# -- public entry point -------------------------------------------------------------------------


def model_inputs(model: nn.Module, example_inputs: Any) -> ModelInputs:
    """``example_inputs`` (a tensor, a tuple of tensors or a dict of them; ``None`` for a timm
    model, which says its input size) matched to ``model``'s forward, on its device, floating
    tensors in its dtype."""
    if example_inputs is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size is None:
            raise SymmetryError(
                f"discover needs example_inputs for {type(model).__name__}: the model does not say "
                f"its input size (no timm default_cfg). Pass e.g. example_inputs=torch.randn(1, 3, 32, 32)."
            )
        example_inputs = torch.randn(1, *size)
    if not isinstance(example_inputs, (torch.Tensor, tuple, list, Mapping)):
        raise SymmetryError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of them, not {type(example_inputs).__name__}"
        )
    inputs = ModelInputs(model, example_inputs)
    if not len(inputs):
        raise SymmetryError("example_inputs is empty: give the model's inputs (a tensor, a tuple or a dict)")
    device, dtype = device_of(model), float_dtype_of(model)

    def place(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        return x.to(device=device, dtype=dtype if x.is_floating_point() and dtype is not None else x.dtype)

    return inputs.map(place)


def _rules() -> dict[Hashable, Rule]:
    from modeconn.plugin_manager import get_registry

    return {e.key: e.obj for e in get_registry("rule")}


def trace_model(
    model: nn.Module, inputs: ModelInputs, *, training: bool = False, capture: str = "fx"
) -> fx.GraphModule:
    """The graph discovery uses, captured in eval mode (or train mode) for ``inputs`` by fx
    symbolic tracing or ``torch.export`` (``capture``); its node names are the ones a spec's
    sites refer to. The model's own mode is left as it was."""
    with modes_restored(model):
        model.train(training)
        if capture == "export":
            return export_graph(model, inputs)
        state = _Discovery(model, _rules(), strict=False)
        gm = trace(model, lambda m: state.module_rule(m) is not None, inputs)
        gm.meta["capture"] = "fx"
        for node in gm.graph.nodes:  # functions fx keeps whole that no rule knows: like opaque modules
            if node.op == "call_function" and kept_whole(node.target) and state.node_rule(node) is None:
                gm.meta["opaque"].setdefault(
                    target_name(node),
                    "torch.fx keeps this function whole (timm's notrace list) and no rule knows it",
                )
        return gm


def _eval_graph(model: nn.Module, inputs: ModelInputs, capture: str) -> fx.GraphModule:
    """The eval-mode graph by ``capture``; for ``"auto"`` fx's, unless fx fails or keeps some
    module whole (its code is not traceable) and torch.export captures the model."""
    if capture not in CAPTURES:
        raise SymmetryError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    if capture != "auto":
        return trace_model(model, inputs, capture=capture)
    try:
        gm = trace_model(model, inputs)
    except TraceError as e:
        gm, fx_failure = None, str(e)
    else:
        if not gm.meta["opaque"]:
            return gm
        fx_failure = "; ".join(f"{name!r}: {why}" for name, why in gm.meta["opaque"].items())
    try:
        return trace_model(model, inputs, capture="export")
    except TraceError as e:
        if gm is not None:
            return gm  # fx's graph, whose untraceable modules discovery fixes with the reason
        raise TraceError(f"neither capture path works.\nfx: {fx_failure}\nexport: {e}") from e


def _doubled(inputs: ModelInputs) -> ModelInputs | None:
    """Batch-of-one inputs repeated to a batch of two (train-mode BatchNorm refuses one sample;
    discovery needs only shapes), or ``None`` when the inputs are not a batch of one."""
    tensors = [v for v in inputs.values if isinstance(v, torch.Tensor)]
    if not tensors or any(t.ndim == 0 or t.shape[0] != 1 for t in tensors):
        return None
    return inputs.map(lambda v: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v)


def discover(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | None = None,
    *,
    strict: bool = False,
    capture: str = "auto",
) -> PermutationSpec:
    """Find the permutation groups of ``model``.

    ``example_inputs`` gives the shapes the model runs on: a tensor, a tuple of tensors (the
    first positional parameters of ``forward``) or a dict (parameters by name, as Hugging Face
    models take them); a batch of one is enough. It may be omitted for timm models, whose
    ``default_cfg`` says their input size. Floating inputs are cast to the model's dtype.
    ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked
    through. The model's graph is captured in eval mode and in train mode (so that
    training-only branches such as auxiliary heads are covered) by ``capture``: ``"fx"``
    (symbolic tracing), ``"export"`` (``torch.export``, which runs the model: Hugging Face
    transformers) or ``"auto"`` (fx, and export where fx fails or must keep modules whole);
    ``spec.capture`` says which. The model is left unchanged. Ops without a permutation rule
    fix the groups they touch, with the reason, or raise
    :class:`~modeconn.UnsupportedOpError` when ``strict=True``.
    """
    model = unwrap(model)
    inputs = model_inputs(model, example_inputs)
    dtype = float_dtype_of(model)
    state = _Discovery(model, _rules(), strict)
    with modes_restored(model):
        gm = _eval_graph(model, inputs, capture)
        capture = gm.meta["capture"]
        for training in (False, True):  # eval first: group names and sites come from the eval graph
            if training:
                gm = trace_model(model, inputs, training=True, capture=capture)
            if capture == "fx":
                gm.train(training)  # its submodules are the model's own (export's bake the mode in)
            state.record_sites = not training
            # train-mode BatchNorm refuses a batch of one; shapes are all discovery needs
            doubled = _doubled(inputs) if training else None
            try:
                state.run(gm, doubled or inputs, dtype)
            except TraceError:
                if doubled is None:
                    raise
                state.run(gm, inputs, dtype)  # a model that only takes the batch it was given
    return _build_spec(state, model, capture)
