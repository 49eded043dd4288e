"""Head groups: attention heads permuted as whole blocks.

Reshaping an axis of ``H·d`` units into ``(H, d)`` gives the ``H`` axis a head space whose
unit ``h`` is the block of units of head ``h`` (:meth:`SpaceGraph.new_heads`). Moving heads
is sound only if every tensor the traces saw treats the heads alike, which is checked here,
after discovery, on every layout it recorded:

- wherever the heads' units appear, all heads appear, in order, as one run (a projection's
  rows, a flat activation, the folded units of a ``(…, H, …, d)`` tensor) — or, when every
  head has the same units (one permutation shared by all heads), beside the heads axis;
- no op fixes, or splits into groups, an axis that holds more than one head's units (a
  constant added to a flat activation, a GroupNorm over it).

Grouped-query attention repeats each key/value head for the query heads that share it: there
the key/value heads' units may also stand each ``r`` times in a row (the query projection's
rows, whose dims follow their key head's; the output projection's columns, which follow their
value head's), and the query heads move with their key/value head as blocks of ``r``. So the
key/value heads are fixed too when anything fixes the query heads' axis other than their
grouping, or binds a tensor along it.

A heads axis split into pieces (a slice, a grouped convolution or a GroupNorm over heads)
leaves each piece a head space of its own heads' blocks. Heads whose units are heads
themselves (a parameter viewed as a matrix reads its rows as heads; cut into attention heads
again) are fixed: the tensors bound along the inner heads' blocks would stay behind.

A head group that fails a check is fixed with the reason; its heads' own units are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from modeconn.symmetry.context import SHARED_KV
from modeconn.symmetry.spaces import Layout, Space, SpaceGraph, TensorLayout
from modeconn.symmetry.spec import Fix, Site, TensorSlice

__all__ = ["HeadGroup", "head_groups"]

_Seg = tuple[int, int]  # (class id, size)


@dataclass
class HeadGroup:
    """One class of head spaces: its heads' units and what was found about them."""

    root: Space
    size: int
    block: int  # units per head
    label: str
    signatures: set[tuple[tuple[_Seg, ...], ...]] = field(default_factory=set)  # per head: its segments
    fixes: list[Fix] = field(default_factory=list)
    slices: list[TensorSlice] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    # grouped-query attention: times each head's units may stand in a row; the units of the
    # query heads sharing each head, with their number; the roots of those query heads' axes
    repeats: set[int] = field(default_factory=lambda: {1})
    grouped: set[tuple[tuple[tuple[_Seg, ...], ...], int]] = field(default_factory=set)
    query_axes: set[int] = field(default_factory=set)

    @property
    def classes(self) -> set[int]:
        return {c for sig, _ in self._signatures for head in sig for c, _ in head}

    @property
    def _signatures(self) -> set[tuple[tuple[tuple[_Seg, ...], ...], int]]:
        return {(sig, 1) for sig in self.signatures} | self.grouped

    @property
    def runs(self) -> set[tuple[tuple[_Seg, ...], int]]:
        """Every way the heads' units appear in one axis: (segments, head blocks each head
        spans there). Besides whole heads, the same part of every head in order (GPT-NeoX's
        value units, cut from each head's fused q/k/v units), if it holds units of its own."""
        out = {(tuple(seg for head in sig for seg in head), n) for sig, n in self.grouped}
        out |= {
            (tuple(seg for head in part for _ in range(r) for seg in head), r)
            for sig in self.signatures
            for part in _parts(sig)
            for r in self.repeats
        }
        return out

    @property
    def shared(self) -> set[int]:
        """The classes of units every head shares (one permutation for all heads): in every
        way the heads were cut, each head holds them (all of a head's units, or a part: GPT-NeoX's
        q dims, merged across heads by its partial rotary, beside each head's own v dims)."""
        own = set().union(*(_own_units(sig) for sig, _ in self._signatures))
        return self.classes - own

    def fix(self, kind: str, why: str) -> None:
        if not any(f.message == why for f in self.fixes):
            self.fixes.append(Fix(kind, why))


def _parts(sig: tuple[tuple[_Seg, ...], ...]) -> list[tuple[tuple[_Seg, ...], ...]]:
    """The heads' whole units, and every same part of each head (a run of segments at the same
    place in every head, which all cut alike) that holds some units no other head shares."""
    out = [sig]
    if len({tuple(size for _, size in head) for head in sig}) != 1:
        return out
    n = len(sig[0])
    for a in range(n):
        for b in range(a + 1, n + 1):
            part = tuple(head[a:b] for head in sig)
            if (a, b) != (0, n) and any(len({head[k] for head in part}) > 1 for k in range(b - a)):
                out.append(part)
    return out


def _segments(sp: SpaceGraph, layout: Layout) -> list[tuple[int, int, int]]:
    return [(id(sp.find(s)), s.size, inner) for s, inner in sp.resolve(layout)]


def _runs(hg: HeadGroup, segs: Sequence[tuple[int, int, int]]) -> tuple[list[tuple[int, int]], bool]:
    """The full runs of the heads' units in one axis layout, as (start index, indices per
    head), and whether every segment of the heads' units lies in one."""
    classes, runs = hg.classes, hg.runs
    found, ok, pos, p = [], True, 0, 0
    while p < len(segs):
        c, size, inner = segs[p]
        if c not in classes:
            pos += size * inner
            p += 1
            continue
        matches = {
            (run, times)
            for run, times in runs
            if [(c2, s2) for c2, s2, _ in segs[p : p + len(run)]] == list(run)
            and {i for _, _, i in segs[p : p + len(run)]} == {inner}
        }
        if len({len(run) for run, _ in matches}) == 1:
            (run, _), *_ = matches
            span = sum(s2 * i for _, s2, i in segs[p : p + len(run)])
            found.append((pos, span // hg.size))
            pos += span
            p += len(run)
        else:  # none, or several readings (heads that share their units, repeated or not)
            ok = False
            pos += size * inner
            p += 1
    return found, ok


def _beside_heads(sp: SpaceGraph, hg: HeadGroup, layouts: Sequence[Layout | None], axis: int) -> bool:
    """Whether axis ``axis`` holds only units every head shares, and another axis the heads (or
    the query heads that share them)."""
    shared = hg.shared
    if not all(c in shared for c, _, _ in _segments(sp, layouts[axis]) if c in hg.classes):
        return False
    axes = hg.query_axes | {id(hg.root)}
    return any(
        a != axis
        and lay is not None
        and len(lay) == 1
        and lay[0][1] in hg.repeats
        and id(sp.find(lay[0][0])) in axes
        for a, lay in enumerate(layouts)
    )


def _every_heads(hg: HeadGroup, segs: Sequence[tuple[int, int, int]]) -> bool:
    """Whether a fold's units (``segs``, heads major) are units every head holds: each head's
    part of the fold then has the same units (GPT-NeoX's q after its rotary dims were sliced
    off, which merges every head's q dims into one permutation)."""
    shared = hg.shared
    return all(c in shared for c, _, _ in segs if c in hg.classes)


def _once_for_all_heads(hg: HeadGroup, segs: Sequence[tuple[int, int, int]]) -> bool:
    """Whether an axis holds, of the heads' units, only units every head shares, each once: one
    copy of what all heads hold alike (Qwen3's and Gemma-3's q/k norm weight of ``head_dim``),
    which no move of whole heads changes."""
    mine = [c for c, _, _ in segs if c in hg.classes]
    shared = hg.shared
    return all(c in shared for c in mine) and len(mine) == len(set(mine))


def _check_tensor(
    sp: SpaceGraph, hg: HeadGroup, layouts: Sequence[Layout | None], extra: Iterable[Layout], what: str
) -> list[tuple[int, int, int]]:
    """Check one tensor's axis layouts (and ``extra`` flat layouts, a fold's); returns the runs
    as (axis, start, indices per head), axis -1 for extra layouts."""
    out = []
    for axis, lay in [*enumerate(layouts), *((-1, e) for e in extra)]:
        if lay is None:
            continue
        segs = _segments(sp, lay)
        if not any(c in hg.classes for c, _, _ in segs):
            continue
        runs, ok = _runs(hg, segs)
        beside = _beside_heads(sp, hg, layouts, axis) if axis >= 0 else _every_heads(hg, segs)
        beside = beside or _once_for_all_heads(hg, segs)
        if not ok and not beside:
            hg.fix("constraint", f"{what} holds the units of some heads only, or out of order")
        out += [(axis, start, step) for start, step in runs]
    return out


def _share_kv(
    sp: SpaceGraph, heads: Sequence[Space], found: Mapping[int, HeadGroup], bindings: Mapping
) -> None:
    """Key/value heads shared by query heads: their units may stand repeated, the query heads'
    units follow them in blocks, and they move only if nothing but the grouping holds their
    query heads' axis."""
    for query, kv, times in sp.shared_kv:
        hk = found.get(id(sp.find(sp.resolve(kv)[0][0])))
        if hk is None:
            continue
        hk.repeats.add(times)
        spaces = [sp.find(s) for s, _ in sp.resolve(query)]
        roots = {id(root) for root in spaces}
        hk.query_axes |= roots
        for root in spaces:
            for f in root.fixed:
                if SHARED_KV not in f.message:
                    hk.fix(f.kind, f"their query heads' axis is held: {f.message}")
            if any(m.children for m in root.members) or len(spaces) > 1:
                hk.fix("constraint", "their query heads' axis is split")
        for s in heads:
            if id(sp.find(s)) not in roots:
                continue
            for blocks in s.blocks:
                if len(blocks) != hk.size * times:
                    hk.fix("constraint", f"their query heads do not come in groups of {times} per head")
                    continue
                units = [tuple((c, size) for c, size, _ in _segments(sp, b)) for b in blocks]
                hk.grouped.add(
                    (tuple(sum(units[h * times : (h + 1) * times], ()) for h in range(hk.size)), times)
                )
        for (tensor, _), lay in bindings.items():
            if lay is not None and any(id(sp.find(s)) in roots for s, _ in sp.resolve(lay)):
                hk.fix("constraint", f"`{tensor}` runs along their query heads' axis")


def _signature(sp: SpaceGraph, blocks: Sequence[Layout]) -> tuple[tuple[_Seg, ...], ...]:
    """The units of each head, as (class id, size) segments."""
    return tuple(tuple((c, size) for c, size, _ in _segments(sp, b)) for b in blocks)


def _query_roots(sp: SpaceGraph) -> set[int]:
    """The roots of the axes of query heads that share a key/value head."""
    return {id(sp.find(s)) for query, _, _ in sp.shared_kv for s, _ in sp.resolve(query)}


def _unite_recuts(sp: SpaceGraph, heads: Sequence[Space], queries: set[int]) -> set[int]:
    """Unite the head spaces that cut one projection into heads alike; returns the ids of those
    that cut it in different ways."""
    # each trace cuts a projection into heads once: a second cut alike moves with the first; cut
    # in another way, neither can move on its own (query heads of grouped-query attention, whose
    # units are their key heads', move with those)
    first: dict[tuple[bool, int], tuple[Space, tuple]] = {}
    conflicts: set[int] = set()
    for s in heads:
        query = id(sp.find(s)) in queries
        sig = _signature(sp, s.blocks[0])
        own = _own_units(sig)
        for c in {c for head in sig for c, _ in head}:
            other, other_sig = first.setdefault((query, c), (s, sig))
            if other is s:
                continue
            if other_sig == sig:
                sp.union(other, s)
            elif not query and (c in own or len(other_sig) != len(sig)):
                # units every head holds alike (q and k dims merged across heads by a partial
                # rotary's concatenation, then with each other by q·kᵀ) are in q's heads and in
                # k's: as many heads on both sides is not another cut
                conflicts |= {id(other), id(s)}
    return conflicts


def _group_heads(sp: SpaceGraph, heads: Sequence[Space], conflicts: set[int]) -> dict[int, HeadGroup]:
    """The head groups by the id of their root, with every signature of their heads' units."""
    found: dict[int, HeadGroup] = {}
    for s in heads:
        root = sp.find(s)
        hg = found.get(id(root))
        block = sum(t.size * i for t, i in sp.resolve(s.blocks[0][0]))
        if hg is None:
            hg = found[id(root)] = HeadGroup(root, s.size, block, s.label, fixes=list(root.fixed))
        if id(s) in conflicts:
            hg.fix("constraint", "one projection is cut into heads in two ways")
        if block != hg.block:
            hg.fix("constraint", "heads of different sizes meet")
        for blocks in s.blocks:
            hg.signatures.add(_signature(sp, blocks))
    return found


def _check_heads(hg: HeadGroup, found: Mapping[int, HeadGroup]) -> None:
    """A single head, or heads whose units are heads themselves, stay in place."""
    if hg.size == 1:
        hg.fix("single_unit", "a single head")
    if hg.classes & found.keys():
        # blocks of a parameter viewed as a matrix, then cut into heads: the tensors bound along
        # the inner heads' blocks would not move
        hg.fix(
            "constraint",
            f"its heads hold other heads ({hg.label}: an axis of heads cut into heads again)",
        )


def _check_ops(sp: SpaceGraph, hg: HeadGroup, fences: Sequence[tuple[Layout, Sequence[int]]]) -> None:
    """No op splits into groups, or depends on the order of, an axis holding several heads."""
    for lay, offsets in fences:
        runs, _ = _runs(hg, _segments(sp, lay))
        if any(start < o < start + step * hg.size for start, step in runs for o in offsets):
            hg.fix("constraint", "an op splits an axis holding several heads into groups")
    longest = max(max(len(head) for head in sig) for sig, _ in hg._signatures)
    # each head's units that no other head shares: an axis holding those of two heads is in order
    own = [_own_units(sig) for sig, _ in hg._signatures]
    for lay in sp.fixed_layouts:
        classes = [c for c, _, _ in _segments(sp, lay)]
        if sum(c in hg.classes for c in classes) > longest or any(
            len({h for c in classes for h in heads.get(c, ())}) > 1 for heads in own
        ):
            hg.fix("constraint", "an op depends on the order of an axis holding several heads")


def _own_units(sig: tuple[tuple[_Seg, ...], ...]) -> dict[int, set[int]]:
    """The classes of units some heads hold but not all, with the heads holding them."""
    heads: dict[int, set[int]] = {}
    for h, head in enumerate(sig):
        for c, _ in head:
            heads.setdefault(c, set()).add(h)
    return {c: hs for c, hs in heads.items() if len(hs) < len(sig)}


def _bound_layouts(
    bindings: Mapping[tuple[str, int], Layout | None], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, list[Layout | None]]:
    """Each bound tensor's axis layouts (``None`` where an axis is unbound or never permuted)."""
    by_tensor: dict[str, list[Layout | None]] = {}
    for (tensor, axis), lay in bindings.items():
        by_tensor.setdefault(tensor, [None] * len(shapes[tensor]))[axis] = lay
    return by_tensor


def _check_tensors(
    sp: SpaceGraph,
    hg: HeadGroup,
    seen: Sequence[TensorLayout],
    bound: Mapping[str, Sequence[Layout | None]],
) -> None:
    """Check every tensor the traces saw and every bound tensor; the heads' runs in the bound
    tensors are the group's slices."""
    for t in seen:
        extra = [t.fold.flat] if t.fold is not None else []
        _check_tensor(sp, hg, t.layouts, extra, f"a tensor of shape {tuple(t.shape)}")
    for tensor, layouts in bound.items():
        for axis, start, step in _check_tensor(sp, hg, layouts, (), f"`{tensor}`"):
            hg.slices.append(TensorSlice(tensor, axis, start, step))


def _add_sites(sp: SpaceGraph, hg: HeadGroup, sites: Sequence[tuple[str, int, Layout, str]]) -> None:
    """The group's sites: the heads' runs in each site's layout."""
    for node, axis, lay, kind in sites:
        runs, _ = _runs(hg, _segments(sp, lay))
        hg.sites += [Site(node, axis, start, step, kind) for start, step in runs]


def head_groups(
    sp: SpaceGraph,
    seen: Sequence[TensorLayout],
    bindings: Mapping[tuple[str, int], Layout | None],
    shapes: Mapping[str, tuple[int, ...]],
    sites: Sequence[tuple[str, int, Layout, str]],
    fences: Sequence[tuple[Layout, Sequence[int]]],
) -> list[HeadGroup]:
    """The head groups of a finished discovery, checked (see the module docstring): their
    slices (tensor names as bound: canonical names) and sites, and why they are fixed."""
    heads = [s for s in sp.spaces if s.blocks and not s.children]  # split: its pieces are head spaces
    found = _group_heads(sp, heads, _unite_recuts(sp, heads, _query_roots(sp)))
    _share_kv(sp, heads, found, bindings)
    queries = _query_roots(sp)
    bound = _bound_layouts(bindings, shapes)
    groups = list(found.values())
    for hg in groups:
        if id(hg.root) in queries:
            continue  # fixed: they move with their key/value heads, which are checked
        _check_heads(hg, found)
        _check_ops(sp, hg, fences)
        _check_tensors(sp, hg, seen, bound)
        _add_sites(sp, hg, sites)
    return groups
