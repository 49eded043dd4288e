"""``RuleContext``: what a permutation rule sees of one graph node, and what it may do.

A rule reads its inputs' layouts by parameter name (:meth:`~RuleContext.tensor`), couples
layouts (:meth:`~RuleContext.merge`), forbids permutations (:meth:`~RuleContext.fix`),
creates the units of a layer (:meth:`~RuleContext.new_units`), says which parameter axes
follow which layout (:meth:`~RuleContext.bind`), marks observation sites
(:meth:`~RuleContext.site`), and returns the layout of the node's output (usually built with
:meth:`~RuleContext.out`). Arguments are normalized against the op's signature first (see
:mod:`modeconn.symmetry.arguments`): a call the rule cannot read raises inside the rule, and
the node is then treated as unsupported — a rule never guesses.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from modeconn.capture.names import node_place, op_name, target_name
from modeconn.plugin_manager import PluginEntry, declare_kind
from modeconn.symmetry.arguments import Arguments, ArgumentsNotUnderstood, normalize, python_type
from modeconn.symmetry.spaces import Fold, Layout, TensorLayout, layout_size
from modeconn.symmetry.spec import Fix

if TYPE_CHECKING:
    from modeconn.symmetry.discovery import _Discovery

__all__ = [
    "RuleContext",
    "Rule",
    "RULES",
    "RELAYOUTS",
    "relayout",
    "Unsupported",
    "target_name",
    "op_name",
    "tensor_layouts",
    "flat_values",
]

SHARED_KV = "query heads that share a key/value head keep their order within the group"
"""The reason the query heads of grouped-query attention are fixed on their own (they move
with their key/value heads)."""


class Unsupported(Exception):
    """Raised by a rule (or a helper it calls) for a form of its op it does not handle: the
    node is then unsupported, with the message as the reason."""


class RuleContext:
    """One graph node as a rule sees it (see the module docstring)."""

    def __init__(self, state: _Discovery, node: fx.Node, module: nn.Module | None):
        self._d = state
        self.node = node
        self.module = module
        self.module_name = state.name_of(node.target) if node.op == "call_module" else ""
        self._args: Arguments | None = None
        self.touched: list[Layout] = []  # layouts this rule created or bound: fixed if it fails

    # -- reading inputs ---------------------------------------------------------------------
    @property
    def args(self) -> Arguments:
        """The node's arguments by parameter name, defaults filled in; the tensor operated on
        is ``"input"``. Reading a parameter the matched signature lacks, or any argument of a
        call that matches no signature, raises :class:`ArgumentsNotUnderstood`."""
        if self._args is None:
            self._args = normalize(self.node, self.module, self._type_of)
        return self._args

    def _type_of(self, raw: Any) -> Any:
        return python_type(self.value(raw))

    def has(self, name: str) -> bool:
        """Whether the matched signature has parameter ``name`` (tells overloads apart)."""
        return name in self.args

    def _raw(self, name: str | int) -> Any:
        if isinstance(name, int):  # the name-th parameter of the matched signature
            names = list(self.args)
            if not 0 <= name < len(names):
                raise ArgumentsNotUnderstood(f"{self.where} has no argument number {name}")
            name = names[name]
        return self.args[name]

    def tensor(self, name: str | int = "input") -> TensorLayout:
        """The layout of tensor argument ``name`` (a parameter name, or its position in the
        op's signature)."""
        a = self.ann(self._raw(name))
        if not isinstance(a, TensorLayout):
            raise ArgumentsNotUnderstood(f"argument {name!r} of {self.where} is not a tensor")
        return a

    def folded(self, name: str | int = "input") -> TensorLayout:
        """:meth:`tensor` with per-head units kept apart: its ``fold`` (if any) says which axes
        hold heads and their units. A rule reading this must keep each head's units to itself
        and move heads only as a whole (see :mod:`modeconn.symmetry.spaces`)."""
        raw = self._raw(name)
        a = self._d.ann.get(raw.name) if isinstance(raw, fx.Node) else None
        if not isinstance(a, TensorLayout):
            raise ArgumentsNotUnderstood(f"argument {name!r} of {self.where} is not a tensor")
        return a

    def collapse(self, t: TensorLayout) -> TensorLayout:
        """``t`` with every head's units merged into one layout of its head-dimension axis."""
        return self._d.collapsed(t, self.where)

    def optional_tensor(self, name: str) -> TensorLayout | None:
        """The layout of argument ``name`` if it is a tensor (``None`` for ``None`` or a
        number); a parameter the signature lacks counts as absent."""
        if name not in self.args:
            return None
        a = self.ann(self.args[name])
        return a if isinstance(a, TensorLayout) else None

    def tensors(self, name: str) -> list[TensorLayout]:
        """The layouts of a sequence-of-tensors argument (``torch.cat``'s ``tensors``)."""
        out = self.ann(self.args[name])  # a list in the call, or a node holding a tuple of tensors
        if not isinstance(out, (list, tuple)):
            raise ArgumentsNotUnderstood(f"argument {name!r} of {self.where} is not a sequence")
        if not all(isinstance(t, TensorLayout) for t in out):
            raise ArgumentsNotUnderstood(f"argument {name!r} of {self.where} holds non-tensors")
        return out

    def const(self, name: str | int) -> Any:
        """The value of a non-tensor argument (an int computed in the graph, ``x.size(1)``,
        counts: its recorded value). A tensor argument raises."""
        raw = self._raw(name)
        if any(tensor_layouts(self.ann(raw))):
            raise ArgumentsNotUnderstood(f"argument {name!r} of {self.where} is a tensor, not a constant")
        return self.value(raw)

    def dtype(self, raw: Any) -> torch.dtype | None:
        """The recorded dtype of a raw tensor argument (``None`` for anything else)."""
        if isinstance(raw, fx.Node):
            return self._d.dtypes.get(raw.name)
        return raw.dtype if isinstance(raw, torch.Tensor) else None

    def value(self, raw: Any) -> Any:
        """A raw argument's recorded value (``torch.Size`` for tensors)."""
        return map_aggregate(raw, lambda a: self._d.values[a.name] if isinstance(a, fx.Node) else a)

    def ann(self, raw: Any) -> Any:
        """The layout of a raw argument: a :class:`TensorLayout` for a tensor, ``None`` for
        constants, tuples/lists of those for sequences. Per-head units are collapsed (one
        permutation for every head); a rule that keeps heads apart reads :meth:`folded`."""
        if isinstance(raw, fx.Node):
            return self._d.collapsed(self._d.ann.get(raw.name), self.where)
        if isinstance(raw, (list, tuple)):
            return type(raw)(self.ann(a) for a in raw)
        if isinstance(raw, dict):
            return {k: self.ann(v) for k, v in raw.items()}
        return None

    def is_state(self, raw: Any) -> bool:
        """Whether a raw argument is one of the model's parameters or buffers, read directly or
        through ops that only move its axes or alias it (a transposed weight: ``w.T``,
        ``w.t()``, ``w.permute(1, 0)``; ``w.detach()``, ``w[...]``; see :func:`relayout`)."""
        while isinstance(raw, fx.Node) and raw.op != "get_attr":
            raw = self._relaid(raw)
        return (
            isinstance(raw, fx.Node)
            and raw.op == "get_attr"
            and self._d.name_of(raw.target) in self._d.canonical
        )

    def _relaid(self, node: fx.Node) -> Any:
        """The tensor ``node`` lays out anew (its first argument) when its rule is a
        :func:`relayout` rule, else ``None``."""
        if node.op not in ("call_function", "call_method") or not node.args:
            return None
        if node.target is builtins.getattr:
            return node.args[0] if node.args[1:2] in (("T",), ("mT",), ("H",), ("mH",)) else None
        if node.target is operator.getitem and len(node.args) == 2:  # x[...], x[:, :]
            index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            return node.args[0] if all(i in (Ellipsis, slice(None)) for i in index) else None
        return node.args[0] if self._d.book.node_rule(node) in RELAYOUTS else None

    def inputs(self, folded: bool = False) -> list[TensorLayout]:
        """The layouts of every tensor among the node's arguments, nested ones included (with
        per-head units kept apart when ``folded``, see :meth:`folded`)."""
        raw = [*self.node.args, *self.node.kwargs.values()]
        if folded:
            anns = map_aggregate(raw, lambda a: self._d.ann.get(a.name) if isinstance(a, fx.Node) else None)
            return list(tensor_layouts(anns))
        return list(tensor_layouts([self.ann(a) for a in raw]))

    @property
    def out_value(self) -> Any:
        """The recorded output structure (``torch.Size`` for a tensor output)."""
        return self._d.values[self.node.name]

    @property
    def where(self) -> str:
        if self.node.op == "call_module":
            return f"{type(self.module).__name__} {self.module_name!r}"
        return node_place(self.node)

    @property
    def op(self) -> str:
        """The op's name as reasons give it (``torch.cumsum``, ``Embedding 'emb'``)."""
        if self.node.op == "call_module":
            return f"{type(self.module).__name__} {self.module_name!r}"
        return target_name(self.node)

    # -- acting -------------------------------------------------------------------------------
    def _fix(self, why: str, kind: str = "constraint") -> Fix:
        return Fix(kind, f"{why} ({self.where})", self.op)

    def merge(self, a: Layout | None, b: Layout | None, why: str = "") -> Layout | None:
        """Couple two layouts of one axis unit by unit; ``None`` (an axis never permuted) fixes the other."""
        fix = Fix("constraint", f"{why or 'coupled'} by {self.where}", self.op)
        return self._d.spaces.merge(a, b, fix)

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
        """Forbid permuting every space in ``layout``, for the reason ``why``."""
        self._d.spaces.fix(layout, self._fix(why))

    def fix_all(self, value: Any, why: str) -> None:
        """Fix every layout found in a layout structure."""
        for ta in tensor_layouts(value):
            for lay in ta.layouts:
                self.fix(lay, why)

    def new_units(self, size: int, label: str | None = None) -> Layout:
        """The output units of a layer: a fresh permutable space."""
        layout = ((self._d.spaces.new(size, label or self.module_name or self.node.name, producer=True), 1),)
        self.touched.append(layout)
        return layout

    def fixed_units(self, size: int, why: str, label: str | None = None) -> Layout:
        """A fresh space that may not be permuted (an embedding's rows, attention internals)."""
        layout = ((self._d.spaces.new(size, label or self.module_name or self.node.name, producer=False), 1),)
        self.fix(layout, why)
        return layout

    def mark_producer(self, layout: Layout | None) -> None:
        """The spaces of ``layout`` are a layer's output units (for layers called functionally,
        whose weights arrive as attributes)."""
        if layout is not None:
            self.touched.append(layout)
        self._d.spaces.mark_producer(layout)

    def split(self, layout: Layout | None, offsets: Sequence[int], fence: bool = True) -> Layout | None:
        """Split spaces so each offset falls between units; ``None`` stays ``None``. With
        ``fence`` the op is recorded as splitting the axis into groups there (heads may not
        straddle an offset); without, the offsets cut within each head alike."""
        if layout is None:
            return None
        if fence:
            self._d.spaces.fences.append((layout, tuple(offsets)))
        res = self._d.spaces.split_at(layout, offsets)
        if res is None:
            self.fix(layout, "split inside a flattened unit")
        return res

    def sub_layout(self, layout: Layout | None, start: int, stop: int, fence: bool = True) -> Layout | None:
        """The part of ``layout`` covering axis indices ``start:stop`` (spaces are split as
        needed; ``fence`` as for :meth:`split`)."""
        if layout is None:
            return None
        res = self.split(layout, [o for o in (start, stop) if 0 < o < layout_size(layout)], fence)
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

    def is_fixed(self, layout: Layout | None) -> bool:
        """Whether no space of ``layout`` may be permuted (so far): it can be treated as ``None``."""
        return layout is not None and all(
            self._d.spaces.find(s).fixed for s, _ in self._d.spaces.resolve(layout)
        )

    def is_heads(self, layout: Layout | None) -> bool:
        """Whether ``layout`` is a heads axis: its spaces move whole heads."""
        return layout is not None and all(
            self._d.spaces.find(s).has_heads for s, _ in self._d.spaces.resolve(layout)
        )

    def param(self, local: str) -> str:
        """The state-dict name of a parameter or buffer of this node's module."""
        return f"{self.module_name}.{local}" if self.module_name else local

    def bind(self, tensor: str, axis: int, layout: Layout | None) -> None:
        """Axis ``axis`` of state-dict entry ``tensor`` follows ``layout``. Axes of a module's
        tensors that its rule does not bind are never permuted by this use of them."""
        if layout is not None:
            self.touched.append(layout)
        self._d.bind(tensor, axis, layout, self.where)

    def bind_local(self, local: str, axis: int, layout: Layout | None) -> None:
        """:meth:`bind` for a parameter or buffer of this node's module; skipped when it is ``None``."""
        if getattr(self.module, local, None) is not None:
            self.bind(self.param(local), axis, layout)

    def site(self, kind: str, out: TensorLayout) -> None:
        """Mark the node's output as an observation site of kind ``"pre"`` or ``"post"`` (only a
        node that returns one tensor can be a site: alignment reads the node's output)."""
        if not isinstance(self.out_value, torch.Size) or tuple(self.out_value) != out.shape:
            return
        for axis, lay in enumerate(out.layouts):
            if lay is not None and self._d.record_sites:
                self._d.sites.append((self.node.name, axis, lay, kind))

    def out(
        self, layouts: Sequence[Layout | None], uniform: bool = False, fold: Fold | None = None
    ) -> TensorLayout:
        """The output layout with the recorded output shape (and per-head units ``fold``)."""
        if not isinstance(self.out_value, torch.Size):
            raise ArgumentsNotUnderstood(f"{self.where} does not return one tensor")
        return TensorLayout(self.out_value, layouts, uniform=uniform, fold=fold)

    def new_heads(self, blocks: Sequence[Layout], label: str) -> Layout:
        """The layout of a heads axis whose head ``h`` owns the units ``blocks[h]``."""
        layout = ((self._d.spaces.new_heads(blocks, label), 1),)
        self.touched.append(layout)
        return layout

    def unfolded(self, fold: Fold, n_heads: int) -> Layout | None:
        """The layout of ``fold``'s heads axis (``n_heads`` long) and units axis flattened
        into one, heads major (each head as often as it is repeated)."""
        out = self._d.spaces.unfolded(fold, n_heads)
        if out is None:
            self.fix(fold.flat, "heads flattened across a flattened unit")
        return out

    def share_heads(self, query: Layout | None, kv: Layout | None, times: int) -> None:
        """Query heads ``query`` (a heads axis) share key/value heads ``kv`` (a heads axis
        whose heads each stand ``times`` times in a row): the query heads move only as the
        blocks of ``times`` that share one key/value head, with it. They keep their order
        within a block, and the key/value heads cannot move if anything fixes or binds the
        query heads' axis (see :mod:`modeconn.symmetry.heads`)."""
        if query is None or kv is None:
            return
        sp = self._d.spaces
        roots = {id(sp.find(s)) for s, _ in sp.resolve(query)}
        for other, other_kv, other_times in sp.shared_kv:
            if roots & {id(sp.find(s)) for s, _ in sp.resolve(other)}:  # keys then values (eager attention)
                if other_times != times:
                    self.fix(other_kv, "query heads share key and value heads in different groupings")
                    self.fix(kv, "query heads share key and value heads in different groupings")
                kv = self.merge(other_kv, kv, "the key and value heads their query heads share")
        sp.shared_kv.append((query, kv, times))
        self.fix(query, SHARED_KV)

    def heads(self, flat: Layout | None, n_heads: int) -> list[Layout] | None:
        """``flat`` cut into ``n_heads`` equal layouts, or ``None`` when it cannot be."""
        return None if flat is None else self._d.spaces.heads(flat, n_heads)

    def unsupported(self, why: str) -> Any:
        """Give up on this node: fix everything it touches (or raise in strict mode)."""
        return self._d.unsupported(self.node, why, self)


def flat_values(value: Any) -> Iterator[Any]:
    """The leaves of a nested structure of lists, tuples and dicts (a ``torch.Size`` is a leaf)."""
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        for v in value:
            yield from flat_values(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from flat_values(v)
    else:
        yield value


def tensor_layouts(value: Any) -> Iterator[TensorLayout]:
    """Every :class:`TensorLayout` in a nested structure of layouts."""
    for v in flat_values(value):
        if isinstance(v, TensorLayout):
            yield v


Rule = Callable[[RuleContext], Any]
"""A permutation rule: it reads one node through its :class:`RuleContext`."""

RELAYOUTS: set[Rule] = set()
"""The rules of ops whose output holds its first argument's elements, only with its axes in
another order (transposes, permutes) or none moved (aliases, ``detach``, ``contiguous``,
dropout): a product with such a view of a parameter is a layer, as with the parameter itself
(:meth:`RuleContext.is_state`)."""


def relayout(rule: Rule) -> Rule:
    """Declare ``rule`` one of :data:`RELAYOUTS`."""
    RELAYOUTS.add(rule)
    return rule


def _validate(entry: PluginEntry) -> None:
    key = entry.key
    key_ok = (isinstance(key, type) and issubclass(key, nn.Module)) or (
        isinstance(key, str) and key.startswith("method:")
    )
    key_ok = key_ok or (callable(key) and not isinstance(key, type))
    if not key_ok:
        raise entry.refuse("a rule's key is an nn.Module class, a function, or 'method:<name>'")
    if not callable(entry.obj) or isinstance(entry.obj, type):
        raise entry.refuse("a rule is a function of one RuleContext")


def _rule_name(key: Any) -> str:
    return key if isinstance(key, str) else op_name(key)


RULES = declare_kind("rule", "modeconn_register_rules", _validate, key_name=_rule_name)
"""The permutation rules, keyed by the op they read: an ``nn.Module`` class, a function (or
ATen op), or ``"method:<name>"``. A key reads as itself (a string) or as :func:`op_name` of it."""
