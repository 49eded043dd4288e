"""``PermutationSpec``: the permutation groups of a model, as found by :func:`discover`."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace

import torch

from modeconn.capture import Capture
from modeconn.errors import SymmetryError

__all__ = [
    "Fix",
    "FIX_KINDS",
    "TensorSlice",
    "Site",
    "Group",
    "PermutationSpec",
    "Perms",
    "unit_positions",
    "unit_view",
]

FIX_KINDS: dict[str, str] = {
    "output": "the model's output units",
    "unsupported": "an op or module without a permutation rule (or a call form its rule does not understand)",
    "constraint": "an op whose meaning depends on the order of the units (indexing, flattening, coupling with an unpermuted axis)",
    "tied": "a tensor shared by several uses, one of which may not permute it",
    "parametrization": "a parametrized or hooked module whose computed tensor cannot be followed",
    "single_unit": "a group of one unit",
    "no_layer": "an axis that holds no layer's units (tokens, positions, kernel taps)",
}
"""The kinds of reason a group is fixed for, as recorded in :attr:`Group.fixes`."""


@dataclass(frozen=True)
class Fix:
    """Why a group may not be permuted: its ``kind`` (a key of :data:`FIX_KINDS`), a message
    naming the op and graph node, and ``op``, the op or module responsible."""

    kind: str
    message: str
    op: str = ""

    def because(self, detail: str) -> Fix:
        """The same fix with a detail appended to its message."""
        return replace(self, message=f"{self.message}: {detail}")

    def __str__(self) -> str:
        return self.message


Perms = dict[str, torch.Tensor]
"""Permutations by group name: ``perms[g][i]`` is the unit that moves to position ``i``."""


@dataclass(frozen=True)
class TensorSlice:
    """Units of a group along one axis of a parameter or buffer.

    The group's unit ``c`` owns indices ``start + c * inner ... start + c * inner + inner - 1``
    of axis ``axis`` of state-dict entry ``tensor``.
    """

    tensor: str
    axis: int
    start: int
    inner: int = 1


@dataclass(frozen=True)
class Site:
    """Where a group's units can be observed: the output of graph node ``node`` (eval-mode
    trace), laid out like a :class:`TensorSlice`. ``kind`` is ``"pre"`` (before a
    nonlinearity: a layer's or norm's output) or ``"post"`` (after one)."""

    node: str
    axis: int
    start: int
    inner: int
    kind: str


def unit_positions(perm: torch.Tensor, start: int, inner: int) -> torch.Tensor:
    """The axis indices of a slice's units in the order ``perm`` puts them (unit ``c`` owns
    ``start + c * inner ... start + c * inner + inner - 1``)."""
    return (perm[:, None] * inner + torch.arange(inner)).reshape(-1) + start


def unit_view(t: torch.Tensor, axis: int, start: int, inner: int, size: int) -> torch.Tensor:
    """A slice's ``size`` units of ``t`` as (outer, units, rest) — a view in the usual contiguous
    case; ``rest`` holds the ``inner`` positions and every axis after ``axis``."""
    block = t.narrow(axis, start, size * inner)
    return block.reshape(math.prod(block.shape[:axis]), size, -1)


@dataclass(frozen=True)
class Group:
    """A set of units that are permuted together, and everything that follows them.

    ``fixes`` says why a group that is not ``permutable`` is fixed; ``hidden`` is true when
    the units are some layer's hidden units (not the model's outputs, not a token or kernel
    axis) — the units :meth:`PermutationSpec.units` counts. ``kind`` is ``"units"``, or
    ``"heads"`` for attention heads: each unit is a whole head (a block of ``inner`` indices
    in each slice, holding units of other groups), moved as a block after those groups'
    permutations are applied within it.
    """

    name: str
    size: int
    permutable: bool
    fixes: tuple[Fix, ...] = ()
    slices: tuple[TensorSlice, ...] = ()
    sites: tuple[Site, ...] = ()
    hidden: bool = True
    kind: str = "units"

    @property
    def reason(self) -> str | None:
        """Why the group is fixed, in words (``None`` when it is permutable)."""
        return "; ".join(f.message for f in self.fixes) or None

    @property
    def tensors(self) -> list[str]:
        return sorted({s.tensor for s in self.slices})

    @property
    def layer_units(self) -> int:
        """How many of a layer's units the group holds: its size times the pieces it holds of
        one tensor axis. A layer's units cut into pieces that must move alike (halves gated
        against each other, units met with their neighbours by ``h[:, 1:] - h[:, :-1]``, a
        ``Linear`` viewed as channels by positions) are one group of the pieces' size."""
        pieces = Counter((s.tensor, s.axis) for s in self.slices)
        return self.size * max(pieces.values(), default=1)


@dataclass
class PermutationSpec:
    """The permutation groups of one architecture.

    ``groups`` maps stable names to :class:`Group`; ``unreached`` lists state-dict entries in
    no group that are never permuted, with the reason (the traces never touched them, or they
    are inside a module the graph keeps whole that no rule knows); ``capture`` says how the
    graph was captured (``"fx"`` or ``"export"``): sites name nodes of that graph, and
    alignment captures the models the same way. ``graph``, set by :func:`~modeconn.discover`
    and never saved, is that capture: alignment reuses it where it fits
    (:meth:`~modeconn.capture.Capture.fits`) instead of capturing again.
    """

    groups: dict[str, Group]
    unreached: dict[str, str] = field(default_factory=dict)
    model: str = ""
    capture: str = "fx"
    graph: Capture | None = field(default=None, repr=False, compare=False)

    # -- queries --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> Group:
        return self.groups[name]

    @property
    def permutable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.permutable]

    @property
    def fixed(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.permutable]

    @property
    def heads(self) -> list[Group]:
        """The groups of attention heads (``kind == "heads"``)."""
        return [g for g in self.groups.values() if g.kind == "heads"]

    def units(self) -> tuple[int, int]:
        """(permutable units, hidden units): the units of every layer's outputs
        (:attr:`Group.layer_units`; outputs, input, token and kernel axes excluded), whichever
        graph capture found them."""
        hidden = [g for g in self.groups.values() if g.hidden]
        return sum(g.layer_units for g in hidden if g.permutable), sum(g.layer_units for g in hidden)

    def fixed_units(self) -> dict[str, int]:
        """Fixed hidden units by the kind of their group's first fix (see :data:`FIX_KINDS`)."""
        counts: Counter[str] = Counter()
        for g in self.groups.values():
            if g.hidden and not g.permutable:
                counts[g.fixes[0].kind if g.fixes else "constraint"] += g.layer_units
        return dict(counts)

    def fixed_ops(self) -> dict[str, int]:
        """Fixed hidden units per op without a rule (``"torch.cumsum"``: 24): what a new rule would free."""
        counts: Counter[str] = Counter()
        for g in self.groups.values():
            if g.hidden and not g.permutable:
                for op in {f.op for f in g.fixes if f.kind == "unsupported" and f.op}:
                    counts[op] += g.layer_units
        return dict(counts)

    def fixing(self, names: Iterable[str], why: str) -> PermutationSpec:
        """A copy with the groups ``names`` fixed for the reason ``why`` (to hold attention
        heads in place, say: ``spec.fixing([h.name for h in spec.heads], "heads kept")``)."""
        groups = dict(self.groups)
        for name in names:
            if name not in groups:
                raise SymmetryError(f"no group named {name!r} in this spec; groups are listed by str(spec)")
            g = groups[name]
            groups[name] = replace(g, permutable=False, fixes=(*g.fixes, Fix("constraint", why)))
        return replace(self, groups=groups)

    # -- permutations -----------------------------------------------------------------------
    def identity(self) -> Perms:
        """The identity permutation of every group."""
        return {g.name: torch.arange(g.size) for g in self.groups.values()}

    def random_permutation(self, seed: int = 0) -> Perms:
        """A random permutation of every permutable group (identity on fixed groups), seeded."""
        gen = torch.Generator().manual_seed(seed)
        return {
            g.name: torch.randperm(g.size, generator=gen) if g.permutable else torch.arange(g.size)
            for g in self.groups.values()
        }

    def check(self, perms: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`SymmetryError` unless ``perms`` is valid for this spec."""
        for name, p in perms.items():
            if name not in self.groups:
                raise SymmetryError(f"no group named {name!r} in this spec; groups are listed by str(spec)")
            g = self.groups[name]
            p = torch.as_tensor(p)
            if p.shape != (g.size,) or not torch.equal(p.sort().values, torch.arange(g.size)):
                raise SymmetryError(f"perms[{name!r}] is not a permutation of {g.size} units")
            if not g.permutable and not torch.equal(p, torch.arange(g.size)):
                raise SymmetryError(
                    f"group {name!r} is fixed ({g.reason}); its permutation must be the identity"
                )

    # -- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "groups": [asdict(g) for g in self.groups.values()],
            "unreached": dict(self.unreached),
            "capture": self.capture,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PermutationSpec:
        groups = {}
        for g in d["groups"]:
            fixes = tuple(Fix(**f) for f in g.get("fixes", ()))
            if not fixes and g.get("reason"):  # written by modeconn 0.1
                fixes = (Fix("constraint", g["reason"]),)
            groups[g["name"]] = Group(
                name=g["name"],
                size=g["size"],
                permutable=g["permutable"],
                fixes=fixes,
                slices=tuple(TensorSlice(**s) for s in g.get("slices", ())),
                sites=tuple(Site(**s) for s in g.get("sites", ())),
                hidden=g.get("hidden", True),
                kind=g.get("kind", "units"),
            )
        return cls(
            groups=groups,
            unreached=dict(d.get("unreached", {})),
            model=d.get("model", ""),
            capture=d.get("capture", "fx"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PermutationSpec:
        return cls.from_dict(json.loads(text))

    # -- display ----------------------------------------------------------------------------
    def __str__(self) -> str:
        perm_units, all_units = self.units()
        share = 100.0 * perm_units / all_units if all_units else 0.0
        shown = [g for g in self.groups.values() if g.hidden or g.kind == "heads"]
        units = [g for g in shown if g.kind != "heads"]
        head = (
            f"PermutationSpec({self.model}): {sum(g.permutable for g in units)}/{len(units)} groups of "
            f"hidden units permutable, {perm_units}/{all_units} units ({share:.1f}%)"
        )
        if self.capture != "fx":
            head += f", captured with torch.{self.capture}"
        width = max([len(g.name) for g in shown] + [5])
        rows = [head, f"  {'group':<{width}}  {'size':>6}  {'tensors':>7}  {'sites':>5}  status"]
        for g in shown:
            status = "permutable" if g.permutable else f"fixed: {g.reason}"
            pieces = g.layer_units // g.size if g.hidden else 1
            size = f"{g.size}x{pieces}" if pieces > 1 else str(g.size)
            rows.append(f"  {g.name:<{width}}  {size:>6}  {len(g.tensors):>7}  {len(g.sites):>5}  {status}")
        other = Counter(
            g.fixes[0].kind if g.fixes else "constraint"
            for g in self.groups.values()
            if not (g.hidden or g.kind == "heads")
        )
        if other:
            what = ", ".join(f"{n} {_OTHER_AXES.get(k, (k, k))[n > 1]}" for k, n in other.most_common())
            rows.append(f"  never permuted, not hidden units: {what}")
        for name, reason in self.unreached.items():
            rows.append(f"  (unreached) {name}: {reason}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        units = [g for g in self.groups.values() if g.hidden]
        return (
            f"<PermutationSpec {self.model}: {sum(g.permutable for g in units)}/{len(units)} groups of "
            f"hidden units permutable>"
        )


_OTHER_AXES = {
    "output": ("model output", "model outputs"),
    "no_layer": ("kernel, token or input axis", "kernel, token or input axes"),
    "constraint": ("axis coupled with an input", "axes coupled with inputs"),
}
"""How the summary names the axes that are not hidden units (one, several), by their first fix."""
