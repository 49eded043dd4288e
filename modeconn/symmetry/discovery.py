"""The discovery pass: trace, run the rules over the graph, and build a PermutationSpec."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from modeconn.errors import SymmetryError, UnsupportedOpError
from modeconn.symmetry.spaces import Layout, SpaceGraph, layout_size
from modeconn.symmetry.spec import Group, PermutationSpec, Site, TensorSlice
from modeconn.symmetry.tracing import modes_restored, record_values, trace

__all__ = ["discover", "TA", "RuleContext", "Rule"]


class TA:
    """Tensor annotation: the shape of a graph value and the layout of each of its axes."""

    __slots__ = ("shape", "layouts")

    def __init__(self, shape: Sequence[int], layouts: Sequence[Layout | None] | None = None):
        self.shape = tuple(shape)
        layouts = tuple(layouts) if layouts is not None else (None,) * len(self.shape)
        if len(layouts) != len(self.shape):
            raise SymmetryError(f"internal: {len(layouts)} layouts for shape {self.shape}")
        # size-1 axes carry no permutation (broadcast, keepdim reductions)
        self.layouts = tuple(None if n == 1 else lay for n, lay in zip(self.shape, layouts))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, axis: int) -> Layout | None:
        return self.layouts[axis]

    def replace(self, axis: int, layout: Layout | None) -> TA:
        layouts = list(self.layouts)
        layouts[axis] = layout
        return TA(self.shape, layouts)

    def __repr__(self) -> str:
        return f"TA({self.shape}, {[None if lay is None else len(lay) for lay in self.layouts]})"


Rule = Callable[["RuleContext"], Any]


class RuleContext:
    """What a permutation rule sees of one graph node, and the operations it may perform.

    A rule reads its inputs' annotations (:meth:`tensor`, :meth:`ann`), couples layouts
    (:meth:`merge`), forbids permutations (:meth:`fix`), creates the units of a layer
    (:meth:`new_units`), says which parameter axes follow which layout (:meth:`bind`), marks
    observation sites (:meth:`site`), and returns the annotation of the node's output
    (usually built with :meth:`out`).
    """

    def __init__(self, state: _Discovery, node: fx.Node, module: nn.Module | None):
        self._d = state
        self.node = node
        self.module = module
        self.module_name = node.target if node.op == "call_module" else ""

    # -- reading inputs ---------------------------------------------------------------------
    @property
    def args(self) -> tuple:
        return self.node.args

    @property
    def kwargs(self) -> dict:
        return self.node.kwargs

    def arg(self, index: int, name: str | None = None, default: Any = None) -> Any:
        """A raw argument (an ``fx.Node`` or a constant), positional ``index`` or keyword ``name``."""
        if index is not None and index < len(self.node.args):
            return self.node.args[index]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def value(self, x: Any) -> Any:
        """A constant argument's value; for a node, the value it had in the recorded run
        (``torch.Size`` for tensors, Python values for ints such as ``x.size(1)``)."""
        return map_aggregate(x, lambda a: self._d.values[a.name] if isinstance(a, fx.Node) else a)

    def ann(self, x: Any) -> Any:
        """The annotation of an argument: a :class:`TA` for a tensor, ``None`` for constants,
        tuples/lists of those for sequences."""
        if isinstance(x, fx.Node):
            return self._d.ann[x.name]
        if isinstance(x, (list, tuple)):
            return type(x)(self.ann(a) for a in x)
        return None

    def tensor(self, index: int, name: str | None = None) -> TA:
        """The annotation of a tensor argument (error if the argument is not a tensor)."""
        a = self.ann(self.arg(index, name))
        if not isinstance(a, TA):
            raise SymmetryError(
                f"internal: argument {index}/{name} of {self.node.format_node()} is not a tensor"
            )
        return a

    @property
    def out_value(self) -> Any:
        """The recorded output structure (``torch.Size`` for a tensor output)."""
        return self._d.values[self.node.name]

    @property
    def where(self) -> str:
        if self.node.op == "call_module":
            return f"{type(self.module).__name__} {self.module_name!r}"
        return f"{_target_name(self.node)} at node {self.node.name!r}"

    # -- acting -------------------------------------------------------------------------------
    def merge(self, a: Layout | None, b: Layout | None, why: str = "") -> Layout | None:
        return self._d.spaces.merge(a, b, f"{why or 'coupled'} by {self.where}")

    def merge_all(self, layouts: Sequence[Layout | None], why: str = "") -> Layout | None:
        """Merge layouts of one axis; an empty sequence gives ``None``."""
        layouts = list(layouts)
        if not layouts:
            return None
        out = layouts[0]
        for lay in layouts[1:]:
            out = self.merge(out, lay, why)
        return out

    def fix(self, layout: Layout | None, why: str) -> None:
        self._d.spaces.fix(layout, f"{why} ({self.where})")

    def fix_all(self, value: Any, why: str) -> None:
        """Fix every layout found in an annotation structure."""
        for ta in _tas(value):
            for lay in ta.layouts:
                self.fix(lay, why)

    def new_units(self, size: int, label: str | None = None) -> Layout:
        """The output units of a layer: a fresh permutable space."""
        return ((self._d.spaces.new(size, label or self.module_name or self.node.name, producer=True), 1),)

    def fixed_units(self, size: int, why: str) -> Layout:
        """A fresh space that may not be permuted (e.g. attention internals)."""
        layout = ((self._d.spaces.new(size, self.module_name or self.node.name, producer=False), 1),)
        self.fix(layout, why)
        return layout

    def mark_producer(self, layout: Layout | None) -> None:
        """The spaces of ``layout`` are a layer's output units (for layers called functionally,
        whose weights arrive as attributes)."""
        self._d.spaces.mark_producer(layout)

    def split(self, layout: Layout | None, offsets: Sequence[int]) -> Layout | None:
        """Split spaces so each offset falls between units; ``None`` stays ``None``."""
        if layout is None:
            return None
        res = self._d.spaces.split_at(layout, offsets)
        if res is None:
            self.fix(layout, "split inside a flattened unit")
        return res

    def sub_layout(self, layout: Layout | None, start: int, stop: int) -> Layout | None:
        """The part of ``layout`` covering axis indices ``start:stop`` (spaces are split as needed)."""
        if layout is None:
            return None
        res = self.split(layout, [o for o in (start, stop) if 0 < o < layout_size(layout)])
        if res is None:
            return None
        out, pos = [], 0
        for s, inner in res:
            end = pos + s.size * inner
            if start <= pos and end <= stop:
                out.append((s, inner))
            pos = end
        return tuple(out)

    def resolve(self, layout: Layout | None) -> Layout | None:
        return None if layout is None else self._d.spaces.resolve(layout)

    def param(self, local: str) -> str:
        """The state-dict name of a parameter or buffer of this node's module."""
        return f"{self.module_name}.{local}" if self.module_name else local

    def bind(self, tensor: str, axis: int, layout: Layout | None) -> None:
        """Axis ``axis`` of state-dict entry ``tensor`` follows ``layout``."""
        self._d.bind(tensor, axis, layout, self.where)

    def bind_local(self, local: str, axis: int, layout: Layout | None) -> None:
        """:meth:`bind` for a parameter or buffer of this node's module; skipped when it is ``None``."""
        if getattr(self.module, local, None) is not None:
            self.bind(self.param(local), axis, layout)

    def site(self, kind: str, out: TA) -> None:
        """Mark the node's output as an observation site of kind ``"pre"`` or ``"post"``."""
        for axis, lay in enumerate(out.layouts):
            if lay is not None and self._d.record_sites:
                self._d.sites.append((self.node.name, axis, lay, kind))

    def out(self, layouts: Sequence[Layout | None]) -> TA:
        """The output annotation with the recorded output shape."""
        return TA(self.out_value, layouts)

    def unsupported(self, why: str) -> Any:
        """Give up on this node: fix everything it touches (or raise in strict mode)."""
        return self._d.unsupported(self.node, why)


def _tas(value: Any):
    if isinstance(value, TA):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tas(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tas(v)


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, str):
        return t
    module = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", repr(t))
    if module in ("_operator", "operator", "builtins"):
        return f"operator.{name}" if module != "builtins" else name
    return f"{module}.{name}" if module else name


class _Discovery:
    """Mutable state of one discovery run over one or more traces of the same model."""

    def __init__(self, model: nn.Module, rules: dict[Hashable, Rule], strict: bool):
        self.model = model
        self.rules = rules
        self.strict = strict
        self.spaces = SpaceGraph()
        self.bindings: dict[tuple[str, int], Layout | None] = {}
        self.binding_order: list[tuple[str, int]] = []
        self.sites: list[tuple[str, int, Layout, str]] = []
        self.reached: set[str] = set()
        self.state_names = set(model.state_dict(keep_vars=True))
        self.values: dict[str, Any] = {}
        self.ann: dict[str, Any] = {}
        self.record_sites = True

    # -- rule lookup -----------------------------------------------------------------------
    def module_rule(self, m: nn.Module) -> Rule | None:
        cls = type(m)
        for base in cls.__mro__:
            if base in self.rules:
                # a subclass may reuse its base's rule only if it does not change forward
                if base is cls or cls.forward is base.forward:
                    return self.rules[base]
                return None
            if base is nn.Module:
                return None
        return None

    def node_rule(self, node: fx.Node) -> Rule | None:
        if node.op == "call_function" and isinstance(node.target, type) and issubclass(node.target, tuple):
            return _namedtuple  # building a (named) tuple of outputs is structure, not computation
        if node.op == "call_function":
            try:
                return self.rules.get(node.target)
            except TypeError:  # unhashable target
                return None
        if node.op == "call_method":
            return self.rules.get(f"method:{node.target}")
        return None

    # -- bookkeeping -------------------------------------------------------------------------
    def bind(self, tensor: str, axis: int, layout: Layout | None, where: str) -> None:
        self.reached.add(tensor)
        key = (tensor, axis)
        if key in self.bindings:
            self.bindings[key] = self.spaces.merge(
                self.bindings[key], layout, f"shared tensor {tensor} in {where}"
            )
        else:
            self.bindings[key] = layout
            self.binding_order.append(key)

    def unsupported(self, node: fx.Node, why: str) -> Any:
        what = f"{why}: {node.format_node()}"
        if self.strict:
            raise UnsupportedOpError(
                f"strict discovery: no permutation rule for {what}. Register one with the "
                f"modeconn_permutation_rules hook, or call discover(..., strict=False) to mark the "
                f"groups it touches as fixed."
            )
        what = _target_name(node)
        if node.op == "call_module":
            what = f"{type(self.model.get_submodule(node.target)).__name__} {node.target!r}"
        reason = f"unsupported op {what} at node {node.name!r}"
        for a in _tas([self.ann_of(x) for x in (*node.args, *node.kwargs.values())]):
            for lay in a.layouts:
                self.spaces.fix(lay, reason)
        if node.op == "call_module":
            for name, _ in self.model.get_submodule(node.target).named_parameters(prefix=node.target):
                self.reached.add(name)
            for name, _ in self.model.get_submodule(node.target).named_buffers(prefix=node.target):
                self.reached.add(name)
        return _blank(self.values[node.name])

    def ann_of(self, x: Any) -> Any:
        if isinstance(x, fx.Node):
            return self.ann.get(x.name)
        if isinstance(x, (list, tuple)):
            return [self.ann_of(a) for a in x]
        if isinstance(x, dict):
            return [self.ann_of(a) for a in x.values()]
        return None

    # -- the pass ---------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
        self.values = record_values(gm, inputs)
        self.ann = {}
        for node in gm.graph.nodes:
            self.ann[node.name] = self.visit(gm, node)

    def visit(self, gm: fx.GraphModule, node: fx.Node) -> Any:
        value = self.values[node.name]
        if node.op == "placeholder":
            return _blank(value)  # model inputs are never permuted
        if node.op == "output":
            for a in _tas(self.ann_of(node.args[0])):
                for lay in a.layouts:
                    self.spaces.fix(lay, "model output")
            return None
        if node.op == "get_attr":
            return self.get_attr(node, value)
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        rule = self.module_rule(module) if module is not None else self.node_rule(node)
        if rule is None:
            kind = f"module type {type(module).__name__}" if module is not None else "op"
            return self.unsupported(node, f"no permutation rule for {kind}")
        ctx = RuleContext(self, node, module)
        if module is not None:
            for name, _ in module.named_parameters(prefix=node.target):
                self.reached.add(name)  # reached, even if the rule binds none of its axes
            for name, _ in module.named_buffers(prefix=node.target):
                self.reached.add(name)
        return rule(ctx)

    def get_attr(self, node: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Size):
            return None
        name = node.target
        if name not in self.state_names:
            return TA(value)  # a constant fx made: it cannot be permuted, so neither can what it couples
        layouts = []
        for axis, n in enumerate(value):
            if n == 1:
                layouts.append(None)
                continue
            lay = ((self.spaces.new(n, name, producer=False), 1),)
            self.bind(name, axis, lay, f"attribute {name}")
            layouts.append(lay)
        self.reached.add(name)
        return TA(value, layouts)


def _namedtuple(ctx: RuleContext) -> tuple:
    return tuple(ctx.ann(a) for a in (*ctx.args, *ctx.kwargs.values()))


def _blank(value: Any) -> Any:
    """An annotation with no permutable axes for a recorded value."""
    if isinstance(value, torch.Size):
        return TA(value)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return (
            type(value)(_blank(v) for v in value)
            if type(value) in (list, tuple)
            else tuple(_blank(v) for v in value)
        )
    return None


# -- spec construction --------------------------------------------------------------------------


def _build_spec(d: _Discovery, model: nn.Module) -> PermutationSpec:
    sp = d.spaces
    aliases: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(t), []).append(name)
    state = model.state_dict(keep_vars=True)

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
            for alias in aliases.get(id(state[tensor]), [tensor]):
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
    for entry in classes.values():
        root = entry["root"]
        producers = [leaf for leaf in entry["leaves"] if leaf.producer] or entry["leaves"]
        first = min(producers, key=lambda s: s.uid)
        # a piece of a split space is named by its unit range within the original space
        name = (
            first.label
            if first.split_from is None
            else f"{first.label}[{first.start}:{first.start + first.size}]"
        )
        base, k = name, 2
        while name in groups:
            name, k = f"{base}#{k}", k + 1
        reason = None
        if root.fixed:
            reason = "; ".join(root.fixed)
        elif not root.has_producer:
            reason = "not tied to any layer's units (a parameter axis that nothing permutes)"
        elif entry["size"] == 1:
            reason = "a single unit"
        groups[name] = Group(
            name=name,
            size=entry["size"],
            permutable=reason is None,
            reason=reason,
            slices=tuple(dict.fromkeys(entry["slices"])),
            sites=tuple(dict.fromkeys(entry["sites"])),
        )
    unreached = {
        name: "not used by the traced forward passes (eval and train mode); never permuted"
        for name in state
        if name not in d.reached and not any(a in d.reached for a in aliases[id(state[name])])
    }
    return PermutationSpec(groups=groups, unreached=unreached, model=type(model).__name__)


# -- public entry point -------------------------------------------------------------------------


def _example_inputs(model: nn.Module, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if example_inputs is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size is None:
            raise SymmetryError(
                f"discover needs example_inputs for {type(model).__name__}: the model does not say "
                f"its input size (no timm default_cfg). Pass e.g. example_inputs=torch.randn(2, 3, 32, 32)."
            )
        example_inputs = torch.randn(2, *size)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not example_inputs or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise SymmetryError("example_inputs must be a tensor or a tuple of tensors")
    if example_inputs[0].shape[0] < 2:
        raise SymmetryError("example_inputs needs a batch of at least 2 (train-mode BatchNorm needs it)")
    return example_inputs


def _rules() -> dict[Hashable, Rule]:
    from modeconn.plugin_manager import get_registry

    return {e.key: e.obj for e in get_registry("rule")}


def trace_model(model: nn.Module, *, training: bool = False, num_inputs: int = 1) -> fx.GraphModule:
    """The fx graph discovery uses, traced in eval mode (or train mode); its node names are the
    ones a spec's sites refer to. The model's own mode is left as it was."""
    state = _Discovery(model, _rules(), strict=False)
    with modes_restored(model):
        model.train(training)
        return trace(model, lambda m: state.module_rule(m) is not None, num_inputs)


def discover(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    strict: bool = False,
) -> PermutationSpec:
    """Find the permutation groups of ``model``.

    ``example_inputs`` (a tensor or a tuple of tensors, batch of at least 2) gives the shapes
    the model runs on; it may be omitted for timm models, whose ``default_cfg`` says their input
    size. The model is traced with torch.fx in eval mode and in train mode (so that
    training-only branches such as auxiliary heads are covered); it is left unchanged.
    Ops without a permutation rule fix the groups they touch, with the reason, or raise
    :class:`~modeconn.UnsupportedOpError` when ``strict=True``.
    """
    inputs = _example_inputs(model, example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(x.to(device) for x in inputs)
    state = _Discovery(model, _rules(), strict)
    with modes_restored(model):
        for training in (False, True):  # eval first: group names and sites come from the eval graph
            gm = trace_model(model, training=training, num_inputs=len(inputs))
            gm.train(training)  # its submodules are the model's own
            state.record_sites = not training
            state.run(gm, inputs)
    return _build_spec(state, model)
