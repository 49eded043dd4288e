"""The discovery pass: trace, run the rules over the graph, and build a PermutationSpec."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.capture import (
    CAPTURES,
    Capture,
    ModelInputs,
    capture,
    graph_name,
    model_inputs,
    node_place,
    record_values,
    target_name,
)
from modeconn.errors import SymmetryError, TraceError, UnsupportedOpError
from modeconn.modules import float_dtype_of, modes_restored, unknown_hooks, unwrap
from modeconn.symmetry.arguments import ArgumentsNotUnderstood
from modeconn.symmetry.context import RULES, Rule, RuleContext, Unsupported, tensor_layouts
from modeconn.symmetry.heads import head_groups
from modeconn.symmetry.parametrizations import derived_tensors
from modeconn.symmetry.spaces import Layout, SpaceGraph, TensorLayout
from modeconn.symmetry.spec import Fix, Group, PermutationSpec, Site, TensorSlice

__all__ = ["discover", "capture_graph", "trace_model", "RuleBook"]


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


try:
    from torch.export._unlift import GuardsFn as _GuardsFn
except ImportError:  # pragma: no cover - a torch whose export adds no guards module
    _GuardsFn = None


def _guards(ctx: RuleContext) -> None:
    """torch.export's check of the input shapes (``_guards_fn``): it computes nothing."""
    return None


class RuleBook:
    """The permutation rules, looked up by what a graph node calls: a module (by its class, or
    a base class whose forward it inherits), a function, an ATen op or a ``Tensor`` method.
    It is also what :func:`~modeconn.capture.capture` keeps whole: the modules and calls a rule
    reads (:class:`~modeconn.capture.Leaves`)."""

    def __init__(self, rules: Mapping[Hashable, Rule] | None = None):
        self.rules = dict(rules) if rules is not None else {e.key: e.obj for e in RULES.registry()}

    def module_rule(self, m: nn.Module) -> Rule | None:
        cls = type(m)
        if cls is _GuardsFn:
            return _guards
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

    def module(self, m: nn.Module) -> bool:
        return self.module_rule(m) is not None

    def function(self, node: fx.Node) -> bool:
        return self.node_rule(node) is not None


class _Discovery:
    """Mutable state of one discovery run over one or more traces of the same model."""

    def __init__(self, model: nn.Module, book: RuleBook, strict: bool):
        self.model = model
        self.book = book
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
        self.no_rule: list[Fix] = []  # the fixes of nodes no rule knows (auto capture may try export)
        # modules with weights that no rule knows, and their parameters: units fx cannot see
        self.kept_whole: dict[str, list[str]] = {}

    def name_of(self, target: str) -> str:
        """The model's name for a module or tensor of the graph being visited."""
        return graph_name(self.gm, target) if self.gm is not None else target

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
        self,
        node: fx.Node,
        why: str,
        ctx: RuleContext | None = None,
        kind: str = "unsupported",
        no_rule: bool = False,
    ) -> Any:
        if self.strict:
            error = UnsupportedOpError(
                f"strict discovery: {why}: {node.format_node()}. Register a rule with the "
                f"modeconn_register_rules hook, or call discover(..., strict=False) to mark the "
                f"groups it touches as fixed."
            )
            error.no_rule = no_rule  # auto capture tries torch.export then
            raise error
        module = self.gm.get_submodule(node.target) if node.op == "call_module" else None
        op = (
            f"{type(module).__name__} {self.name_of(node.target)!r}"
            if module is not None
            else target_name(node)
        )
        place = f"{op} at node {node.name!r}" if module is not None else node_place(node)
        fix = Fix(kind, f"{place}: {why}", op)
        if no_rule:
            self.no_rule.append(fix)
            if module is not None and next(module.parameters(), None) is not None:
                prefix = self.name_of(node.target)
                self.kept_whole[op] = [f"{prefix}.{p}" for p, _ in module.named_parameters()]
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
        rule = self.book.module_rule(module) if module is not None else self.book.node_rule(node)
        if rule is None:
            why = (
                self.gm.meta.get("opaque", {}).get(self.name_of(node.target)) if module is not None else None
            )
            return self.unsupported(node, why or "no permutation rule", no_rule=True)
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
    """The spec of a finished discovery: a group per class of units (named from its producers'
    labels, in the order of its first tensor binding), then a group per head group."""
    aliases = _aliases(d.canonical)
    sp = d.spaces
    heads = {id(h.root): h for h in head_groups(sp, d.seen, d.bindings, d.state_shapes, d.sites, sp.fences)}
    groups: dict[str, Group] = {}
    for entry in _unit_classes(d, aliases).values():
        h = heads.get(id(entry["root"]))
        if h is not None:  # a tensor along a heads axis: it moves with the heads
            h.slices += entry["slices"]
            h.sites += entry["sites"]
            continue
        name = _unique(_class_name(entry), groups)
        groups[name] = _units_group(name, entry)
    for h in heads.values():
        name = _unique(h.label, groups)
        groups[name] = _heads_group(name, h, aliases)
    return PermutationSpec(
        groups=groups, unreached=_unreached(d), model=type(model).__name__, capture=capture
    )


def _aliases(canonical: Mapping[str, str]) -> dict[str, list[str]]:
    """Every state-dict name of each canonical tensor name."""
    aliases: dict[str, list[str]] = {}
    for name, c in canonical.items():
        aliases.setdefault(c, []).append(name)
    return aliases


def _leaf_starts(sp: SpaceGraph, layout: Layout) -> list[tuple[Any, int, int]]:
    """Each leaf of ``layout`` as (leaf, indices per unit, start index)."""
    out, pos = [], 0
    for leaf, inner in sp.resolve(layout):
        out.append((leaf, inner, pos))
        pos += leaf.size * inner
    return out


def _class_entry(classes: dict[int, dict], sp: SpaceGraph, leaf: Any) -> dict:
    """The entry of ``leaf``'s class in ``classes``, added if new, with ``leaf`` among its leaves."""
    root = sp.find(leaf)
    if id(root) not in classes:
        classes[id(root)] = {"root": root, "size": leaf.size, "slices": [], "sites": [], "leaves": []}
    entry = classes[id(root)]
    if leaf not in entry["leaves"]:
        entry["leaves"].append(leaf)
    return entry


def _unit_classes(d: _Discovery, aliases: Mapping[str, list[str]]) -> dict[int, dict]:
    """The classes of units along bound tensor axes, by root id in the order their first tensor
    binding appears: each with its root, size, leaves, slices (under every alias of a tensor)
    and sites."""
    sp = d.spaces
    classes: dict[int, dict] = {}
    for tensor, axis in d.binding_order:
        layout = d.bindings[(tensor, axis)]
        if layout is None:
            continue
        for leaf, inner, pos in _leaf_starts(sp, layout):
            entry = _class_entry(classes, sp, leaf)
            entry["slices"] += [TensorSlice(alias, axis, pos, inner) for alias in aliases[tensor]]
    for node, axis, layout, kind in d.sites:
        for leaf, inner, pos in _leaf_starts(sp, layout):
            entry = classes.get(id(sp.find(leaf)))
            if entry is not None:
                entry["sites"].append(Site(node, axis, pos, inner, kind))
    return classes


def _unique(name: str, groups: Mapping[str, Group]) -> str:
    """``name``, or ``name#2``, ``name#3``, ... if ``groups`` has it."""
    base, k = name, 2
    while name in groups:
        name, k = f"{base}#{k}", k + 1
    return name


def _class_name(entry: dict) -> str:
    """The label of the class's first producer (first leaf if none); a piece of a split space
    is named by its unit range within the original space."""
    producers = [leaf for leaf in entry["leaves"] if leaf.producer] or entry["leaves"]
    first = min(producers, key=lambda s: s.uid)
    if first.split_from is None:
        return first.label
    return f"{first.label}[{first.start}:{first.start + first.size}]"


def _units_group(name: str, entry: dict) -> Group:
    """The group of one class of units."""
    root = entry["root"]
    fixes = tuple(root.fixed)
    if not fixes and not root.has_producer:
        fixes = (Fix("no_layer", "not tied to any layer's units (a parameter axis that nothing permutes)"),)
    elif not fixes and entry["size"] == 1 and root.shifted is not None:
        fixes = (
            Fix(
                "single_unit",
                f"a single unit: pieces of one layer's units meet at other offsets ({root.shifted.message}), "
                f"as in h[:, 1:] - h[:, :-1], which ties each unit to its neighbour",
                root.shifted.op,
            ),
        )
    elif not fixes and entry["size"] == 1:
        fixes = (Fix("single_unit", "a single unit"),)
    return Group(
        name=name,
        size=entry["size"],
        permutable=not fixes,
        fixes=fixes,
        slices=tuple(dict.fromkeys(entry["slices"])),
        sites=tuple(dict.fromkeys(entry["sites"])),
        hidden=root.has_producer and not any(f.kind == "output" for f in fixes),
    )


def _heads_group(name: str, h: Any, aliases: Mapping[str, list[str]]) -> Group:
    """The group of one head group, its slices under every alias of their tensors."""
    slices = [
        TensorSlice(alias, sl.axis, sl.start, sl.inner)
        for sl in h.slices
        for alias in aliases.get(sl.tensor, [sl.tensor])
    ]
    return Group(
        name=name,
        size=h.size,
        permutable=not h.fixes,
        fixes=tuple(h.fixes),
        slices=tuple(dict.fromkeys(slices)),
        sites=tuple(dict.fromkeys(h.sites)),
        hidden=False,
        kind="heads",
    )


def _unreached(d: _Discovery) -> dict[str, str]:
    """The state-dict entries the traced forward passes never used, with why."""
    return {
        name: "not used by the traced forward passes (eval and train mode); never permuted"
        for name, canonical in d.canonical.items()
        if canonical not in d.reached
    }


# -- public entry point -------------------------------------------------------------------------


def capture_graph(
    model: nn.Module,
    inputs: ModelInputs,
    *,
    training: bool = False,
    how: str = "fx",
    rules: RuleBook | None = None,
) -> Capture:
    """The graph discovery reads, captured in eval mode (or train mode) for ``inputs`` ``how``
    (see :data:`~modeconn.capture.CAPTURES`), with the modules a rule knows kept whole; its
    node names are the ones a spec's sites refer to. The model's own mode is left as it was."""
    if how not in CAPTURES:
        raise SymmetryError(f"capture must be one of {', '.join(CAPTURES)}, got {how!r}")
    return capture(model, inputs, how=how, training=training, leaves=rules or RuleBook())


def trace_model(
    model: nn.Module, inputs: ModelInputs, *, training: bool = False, capture: str = "fx"
) -> fx.GraphModule:
    """The module of :func:`capture_graph`: the graph alone."""
    return capture_graph(model, inputs, training=training, how=capture).graph


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
    transformers) or ``"auto"`` (fx, and export where fx fails or must keep modules whole —
    or where fx's graph keeps whole a module or function that no rule knows, such as
    ``nn.TransformerEncoder``, and export's graph leaves more hidden units permutable; when
    export fails there, the fixes say so); ``spec.capture`` says which. The model is left
    unchanged. Ops without a permutation rule fix the groups they touch, with the reason, or
    raise :class:`~modeconn.UnsupportedOpError` when ``strict=True``.
    """
    model = unwrap(model)
    inputs = model_inputs(model, example_inputs)
    book = RuleBook()
    with modes_restored(model):
        graph = capture_graph(model, inputs, how=capture, rules=book)
        # auto: fx's graph, unless it keeps whole a module or function no rule knows (and export
        # was not tried for it already): then export's, if that leaves more units permutable
        retry = capture == "auto" and graph.how == "fx" and not graph.graph.meta["opaque"]
        try:
            spec, no_rule, kept_whole = _discover_on(model, inputs, graph, book, strict)
        except UnsupportedOpError as e:
            if not (retry and getattr(e, "no_rule", False)):
                raise
            found = _by_export(model, inputs, book, strict)
            if isinstance(found, str):
                raise  # strict, and export does not do better: fx's error
            return found
        # a module kept whole with weights hides its units (and any heads) from fx's spec, even
        # where no group fx sees is held (an encoder reading the model's inputs directly)
        if retry and (_held_by(spec, no_rule) or kept_whole):
            found = _by_export(model, inputs, book, strict)
            if isinstance(found, str):
                detail = f"auto capture tried torch.export instead, which failed ({found})"
                return _inside_kept_whole(_noted(spec, no_rule, detail), kept_whole, detail)
            if _score(found) > _score(spec):
                return found
    return spec


def _discover_on(
    model: nn.Module, inputs: ModelInputs, graph: Capture, book: RuleBook, strict: bool
) -> tuple[PermutationSpec, list[Fix], dict[str, list[str]]]:
    """The spec found on ``graph`` (the eval graph) and on the same capture in train mode, the
    fixes of the nodes no rule knows, and the modules with weights among them."""
    dtype = float_dtype_of(model)
    state = _Discovery(model, book, strict)
    for training in (False, True):  # eval first: group names and sites come from the eval graph
        gm = (
            capture_graph(model, inputs, training=True, how=graph.how, rules=book).graph
            if training
            else graph.graph
        )
        if graph.how == "fx":
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
    spec = _build_spec(state, model, graph.how)
    spec.graph = graph  # the eval graph its sites name: alignment reuses it
    return spec, state.no_rule, state.kept_whole


def _held_by(spec: PermutationSpec, fixes: Sequence[Fix]) -> bool:
    """Whether some group of hidden units, or of heads, is fixed by one of ``fixes``."""
    return any(f in fixes for g in spec.fixed if g.hidden or g.kind == "heads" for f in g.fixes)


def _score(spec: PermutationSpec) -> tuple[int, int]:
    """What a capture frees: permutable hidden units, then heads that may move."""
    return spec.units()[0], sum(h.size for h in spec.heads if h.permutable)


def _by_export(model: nn.Module, inputs: ModelInputs, book: RuleBook, strict: bool) -> PermutationSpec | str:
    """The spec on torch.export's graph, or why there is none (the first line of the error)."""
    try:
        graph = capture_graph(model, inputs, how="export", rules=book)
        return _discover_on(model, inputs, graph, book, strict)[0]
    except (TraceError, UnsupportedOpError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _inside_kept_whole(
    spec: PermutationSpec, kept_whole: Mapping[str, list[str]], detail: str
) -> PermutationSpec:
    """``spec`` saying, of each weight inside a module kept whole, why it is never permuted
    (it is in no group, so no group's reason would say it)."""
    unreached = dict(spec.unreached)
    for op, names in kept_whole.items():
        for name in names:
            unreached.setdefault(name, f"inside {op}, which fx keeps whole and no rule knows; {detail}")
    return replace(spec, unreached=unreached)


def _noted(spec: PermutationSpec, fixes: Sequence[Fix], detail: str) -> PermutationSpec:
    """``spec`` with ``detail`` added to each of ``fixes`` wherever a group has it."""
    groups = {
        name: replace(g, fixes=tuple(f.because(detail) if f in fixes else f for f in g.fixes))
        for name, g in spec.groups.items()
    }
    return replace(spec, groups=groups)
