"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2): permutations that maximize
Σ ⟨θ_A, Pθ_B⟩ over every tensor a spec touches, by coordinate descent over groups."""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from modeconn.alignment.assignment import solve_assignments
from modeconn.alignment.attention_heads import HeadStructure, HeadView, head_view
from modeconn.memory import release_freed_memory
from modeconn.symmetry.spec import Group, PermutationSpec

__all__ = ["STARTS", "TOL", "WeightSimilarity", "match_weights", "weight_similarity", "signature_matching"]

TOL = 1e-4
"""Weight matching stops when a sweep raises Σ ⟨θ_A, Pθ_B⟩ by less than this fraction of its
bound ‖θ_A‖·‖θ_B‖: later sweeps move a few units each, for gains of ~1e-5 per sweep
(measured on random-init timm mobilenetv3_large_100; docs/align.md)."""

STARTS = ("greedy", "signature")
"""The starts weight matching can descend from (:func:`match_weights`)."""


def match_weights(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    *,
    groups: Sequence[Group] | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = TOL,
    heads: HeadView | None = None,
    starts: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Solve one linear assignment per group with the other groups' permutations held fixed,
    in a seeded random order, until a full sweep changes nothing or raises the objective by
    less than ``tol`` times its bound ‖θ_A‖·‖θ_B‖ (``tol=0``: until nothing changes), or after
    ``max_iter`` sweeps. Attention heads are matched by the best assignment of their units,
    then units within matched heads (:mod:`modeconn.alignment.attention_heads`).

    Where the descent starts decides which local optimum it ends in. ``"greedy"`` places each
    group once, the best determined first, on the weights whose other axes are already
    placed: an MLP's first hidden layer from its weights alone, the next from its weights and
    that placement, ... (head groups are left out of its evidence until the descent solves
    them). ``"signature"`` matches statistics of each unit that no other group's permutation
    changes (:func:`signature_matching`): exact when B is a permuted copy of A, but a worse
    optimum on independent models (docs/align.md). ``starts`` lists the starts to descend
    from, keeping the highest objective (the earlier on a tie); by default (None) the greedy
    one, and the signature one too only where the greedy one may have missed an exact match:
    when it had to fall back (a group nothing placed told apart) or when every tensor of B
    has A's norm (a permuted copy, perhaps) and the bound was not reached.

    ``groups`` restricts which groups are updated (default: all permutable groups); ``init``
    gives starting permutations, and the updated groups it leaves out start from each start.
    Returns permutations for every permutable group, ``perms[g][i]`` = the unit of B moved to
    position ``i``. ``heads``: ``spec`` is already the flat view of a spec
    (:func:`head_view`), whose flat groups are solved with their structure and returned as
    they are.
    """
    if starts is not None and (not starts or set(starts) - set(STARTS)):
        raise ValueError(f"starts must be some of {STARTS}, got {list(starts)}")
    original = spec if heads is None else None
    if heads is None:
        heads = head_view(spec)
        if groups is not None:
            groups = heads.groups_for(groups)
        init = heads.flatten(init) if init else init
    spec = heads.spec
    joint = heads.joint
    todo = list(groups) if groups is not None else [g for g in spec.permutable if g.kind != "heads"]
    layout = _Layout(spec, state_a, state_b)
    init = dict(init or {})
    base = {g.name: torch.arange(g.size) for g in spec.permutable}
    plain = [g for g in todo if g.name not in init and g.name not in joint]
    unplaced = [g.name for g in todo if g.name in joint and g.name not in init]
    found: dict[str, dict[str, torch.Tensor]] = {}

    def signatures() -> dict[str, torch.Tensor]:
        if "signatures" not in found:
            found["signatures"] = _signature_matching(layout, plain)
        return found["signatures"]

    for structure in {joint[g.name] for g in todo if g.name in joint and g.name not in init}:
        mats = {}
        for name in structure.names:
            sa, sb = layout.signature(name, "a"), layout.signature(name, "b")
            if sa is not None:
                mats[name] = -torch.cdist(sa, sb).square()
            elif name not in structure.external:
                mats[name] = torch.zeros(spec.groups[name].size, spec.groups[name].size)
        base.update(heads.solve(structure, mats, maximize=True))
    base.update({k: torch.as_tensor(v, dtype=torch.long).cpu() for k, v in init.items() if k in base})
    bound = layout.bound()
    plan = list(dict.fromkeys(starts or ["greedy"]))
    best, best_value = None, -math.inf
    for start in plan:  # grows by "signature" below, at most once
        perms = dict(base)
        if start == "signature":
            perms.update(signatures())
            fell_back = False
        else:
            placed, fell_back = _greedy_start(layout, plain, perms, signatures, unplaced)
            perms.update(placed)
        perms = _descend(layout, heads, todo, perms, seed, max_iter, tol, bound)
        value = layout.total(perms) if starts is None or len(plan) > 1 else 0.0
        # the earlier start unless a later one is higher by more than rounding
        if best is None or value > best_value + 1e-9 * max(abs(best_value), 1.0):
            best, best_value = perms, value
        if best_value >= bound * (1 - 1e-9):  # no start can do better (a permuted copy)
            break
        if starts is None and "signature" not in plan and (fell_back or layout.same_norms()):
            plan.append("signature")
    assert best is not None
    layout.forget()
    release_freed_memory()  # the pieces and matrices: the aligned copy made next comes on top
    return heads.expand(best) if original is not None else best


def _descend(
    layout: _Layout,
    heads: HeadView,
    todo: Sequence[Group],
    perms: dict[str, torch.Tensor],
    seed: int,
    max_iter: int,
    tol: float,
    bound: float,
) -> dict[str, torch.Tensor]:
    """Coordinate descent over ``todo`` from ``perms`` (updated in place and returned)."""
    joint = heads.joint
    # A group's matrix depends only on its neighbours' permutations (and on its own when it
    # permutes a tensor on two axes): a group none of them has moved since it was last solved
    # would get the same assignment again, so it is skipped.
    stale = {g.name for g in todo}
    gen = torch.Generator().manual_seed(seed)
    width = max(1, torch.get_num_threads())
    for _ in range(max_iter):
        gain = 0.0
        # Groups of a sweep that are not neighbours of each other are solved together (their
        # assignments on threads): none changes another's matrix or staleness, so this is the
        # same sequence of steps as one group at a time in the sweep's order.
        batch: list[Group] = []
        for gi in torch.randperm(len(todo), generator=gen).tolist():
            g = todo[gi]
            alone = g.name in joint or g.name in layout.quadratic
            if batch and (alone or len(batch) == width or _touches(layout, g, batch)):
                gain += _steps(layout, batch, perms, stale)
                batch = []
            if g.name not in stale:
                continue
            if g.name in joint:  # a head structure: all its groups at once
                gain += _heads_step(layout, heads, joint[g.name], perms, stale)
            elif alone:
                gain += _steps(layout, [g], perms, stale)
            else:
                batch.append(g)
        gain += _steps(layout, batch, perms, stale)
        if gain == 0.0 or gain < tol * bound:
            break
    return perms


def _greedy_start(
    layout: _Layout,
    groups: Sequence[Group],
    perms: Mapping[str, torch.Tensor],
    fallback: Callable[[], Mapping[str, torch.Tensor]],
    unplaced: Collection[str] = (),
) -> tuple[dict[str, torch.Tensor], bool]:
    """Each of ``groups`` solved once, on the weights whose other axes belong to no group or
    to one already placed (``perms`` places every group outside ``groups``): at each step the
    group with the most such entries per unit, so that placements build on the best
    determined ones (an MLP: the first hidden layer from its weights alone, then the next
    given it, ...); the weights of ``unplaced`` groups are left out too. A group with no such
    weights left takes its place in ``fallback()`` (or stays). Returns the placements and
    whether any group fell back."""
    perms = dict(perms)
    pending = {g.name: g for g in groups}
    found, fell_back = {}, False
    unknown = set(unplaced) | pending.keys()
    while pending:
        pick, most = None, 0.0
        for name, g in pending.items():
            entries = sum(
                layout.entries[name, deps]
                for deps in layout.depends.get(name, {})
                if unknown.isdisjoint(deps)
            )
            if entries / g.size > most:
                pick, most = name, entries / g.size
        m = None if pick is None else layout.similarity(pick, perms, skip=unknown)
        if m is None or float(m.max() - m.min()) <= 1e-12 * max(float(m.abs().max()), 1e-300):
            # nothing placed tells its units apart (or any group's): its fallback, if any
            pick = next(iter(pending)) if pick is None else pick
            fell_back = True
            if pick in fallback():
                perms[pick] = found[pick] = fallback()[pick]
        else:
            perms[pick] = found[pick] = solve_assignments([m], maximize=True)[0]
        del pending[pick]
        unknown.discard(pick)
    return found, fell_back


def _touches(layout: _Layout, g: Group, batch: Sequence[Group]) -> bool:
    """Whether a move of ``g`` or of a group of ``batch`` changes the other's matrix."""
    near = layout.neighbours.get(g.name, set())
    return any(b.name in near or g.name in layout.neighbours.get(b.name, set()) for b in batch)


def _steps(layout: _Layout, groups: Sequence[Group], perms: dict, stale: set) -> float:
    """One coordinate step on each of ``groups``, which are not neighbours of each other: the
    assignment of its similarity, kept if it raises the objective. Updates ``perms`` and
    ``stale``; returns the gain."""
    if not groups:
        return 0.0
    stale.difference_update(g.name for g in groups)
    mats = [layout.similarity(g.name, perms) for g in groups]
    gain = 0.0
    for g, m, new in zip(groups, mats, solve_assignments(mats, maximize=True)):
        if torch.equal(new, perms[g.name]):
            continue
        trial = {**perms, g.name: new}
        # The assignment maximizes the objective as linear in this group's permutation; a
        # tensor the group permutes on two axes (a recurrent or tied square weight) makes
        # it quadratic, so there the true objective is compared.
        if g.name in layout.quadratic:
            before, after = layout.objective(g.name, perms), layout.objective(g.name, trial)
        else:
            rows = torch.arange(g.size)
            before, after = float(m[rows, perms[g.name]].sum()), float(m[rows, new].sum())
        # a move must gain more than rounding: an equally good assignment could cycle
        if not after > before + 1e-9 * max(abs(before), 1.0):
            continue
        perms[g.name] = new
        gain += after - before
        stale |= layout.neighbours.get(g.name, set())
    return gain


def _heads_step(layout: _Layout, heads: HeadView, structure: HeadStructure, perms: dict, stale: set) -> float:
    """One coordinate step on a head structure's flat groups: heads, then units within them.
    Updates ``perms`` and ``stale``; returns the gain."""
    names = structure.names
    stale.difference_update(names)
    mats = {n: layout.similarity(n, perms) for n in names}
    new = heads.solve(structure, mats, maximize=True)
    if all(torch.equal(new[n], perms[n]) for n in names):
        return 0.0
    trial = {**perms, **new}
    if structure.external:  # the heads and an outside group move one tensor on two axes
        before, after = layout.total(perms), layout.total(trial)
    elif any(n in layout.quadratic for n in names):
        before = sum(layout.objective(n, perms) for n in names)
        after = sum(layout.objective(n, trial) for n in names)
    else:
        before = sum(float(mats[n][torch.arange(len(perms[n])), perms[n]].sum()) for n in names)
        after = sum(float(mats[n][torch.arange(len(new[n])), new[n]].sum()) for n in names)
    if not after > before + 1e-9 * max(abs(before), 1.0):
        return 0.0
    perms.update(new)
    for n in names:
        stale |= layout.neighbours.get(n, set())
    return after - before


def weight_similarity(
    spec: PermutationSpec,
    group: Group,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    perms: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Σ over the group's slices of ⟨unit i of A, unit j of B⟩, with every other group of B at
    its permutation in ``perms``: the matrix weight matching maximizes for one group. Head
    groups are taken at the identity (weight matching works on :func:`head_view`, where a
    layer's heads and the units inside them are flat groups)."""
    return WeightSimilarity(spec, state_a, state_b)(group, perms)


class WeightSimilarity:
    """:func:`weight_similarity` for many groups and permutations of the same two models: the
    index structures and model A's unit matrices are built once."""

    def __init__(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> None:
        self._layout = _Layout(spec, state_a, state_b)

    def __call__(self, group: Group, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The group's similarity matrix (float64), a new tensor the caller may change."""
        return self._layout.similarity(group.name, perms)

    def neighbours(self, group: Group) -> set[str]:
        """The groups whose permutations the similarity of ``group`` depends on."""
        return self._layout.neighbours.get(group.name, set())


def signature_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    groups: Sequence[Group] | None = None,
) -> dict[str, torch.Tensor]:
    """Match each group's units by what no other group's permutation can change: within each
    slice, statistics of a unit's sub-tensor that do not depend on the order of its entries
    (other groups only move entries inside it). When B is a permutation of A, corresponding
    units have the same signatures (up to rounding), so the match is exact — a start from
    which coordinate descent cannot be trapped."""
    return _signature_matching(_Layout(spec, state_a, state_b), spec.permutable if groups is None else groups)


def _signature_matching(layout: _Layout, groups: Sequence[Group]) -> dict[str, torch.Tensor]:
    names, costs = [], []
    for g in groups:
        sa, sb = layout.signature(g.name, "a"), layout.signature(g.name, "b")
        if sa is not None:
            names.append(g.name)
            costs.append(torch.cdist(sa, sb).square())
    return dict(zip(names, solve_assignments(costs, maximize=False)))


_CHUNK = 1 << 16
"""Elements of one piece of a tensor that the products, signatures and norms work on at a
time: their working set is a few such pieces, never a copy of a whole tensor or model."""

_KEPT = 0.05
_KEPT_MIN = 8 << 20
"""A group's similarity is a sum of parts, each depending on the permutations of some other
groups; parts are kept for reuse until those move, in at most ``_KEPT`` of both models'
weight bytes (or ``_KEPT_MIN`` bytes, if more)."""


def _pieces(
    t: torch.Tensor,
    axis: int,
    index: torch.Tensor | None = None,
    outer_map: torch.Tensor | None = None,
    rest_map: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """``t`` as (outer, axis, rest) — the dimensions before ``axis``, ``axis``, the ones
    after it, flattened — in pieces of about :data:`_CHUNK` elements that split outer and
    rest and keep the whole axis: ``index`` picks positions along the axis, ``outer_map`` and
    ``rest_map`` the order of outer and rest entries (None: all, as they are). Only pieces
    are copied (a gather, or a dtype change to float32 for products)."""
    outer, rest = math.prod(t.shape[:axis]), math.prod(t.shape[axis + 1 :])
    v = t.reshape(outer, t.shape[axis], rest)
    count = t.shape[axis] if index is None else len(index)
    if index is not None:
        index = index.to(t.device)
    if count * rest <= _CHUNK:
        step_o, step_r = max(1, _CHUNK // max(1, count * rest)), rest
    else:
        step_o, step_r = 1, max(1, _CHUNK // max(1, count))
    for o in range(0, outer, step_o):
        for r in range(0, rest, step_r):
            if outer_map is None:
                piece = v[o : o + step_o]
            else:
                piece = v.index_select(0, outer_map[o : o + step_o].to(t.device))
            if rest_map is None:
                piece = piece[:, :, r : r + step_r]
            else:
                piece = piece.index_select(2, rest_map[r : r + step_r].to(t.device))
            yield piece if index is None else piece.index_select(1, index)


@dataclass(frozen=True)
class _Block:
    """All slices of one group along one axis of one tensor that share an ``inner``: gathering
    ``index`` along ``axis`` puts them side by side as (outer, slices, units, inner, rest)."""

    tensor: str
    axis: int
    index: torch.Tensor | None  # None: the whole axis, in order
    slices: int
    inner: int

    def units(self, t: torch.Tensor, size: int, **maps: torch.Tensor | None) -> Iterator[torch.Tensor]:
        """(slices, units, entries) pieces of ``t``, every slice's units as rows; the pieces
        split the entries, the same way for both models (``maps``: see :func:`_pieces`)."""
        for piece in _pieces(t, self.axis, self.index, **maps):
            o, r = piece.shape[0], piece.shape[2]
            x = piece.reshape(o, self.slices, size, self.inner, r).permute(1, 2, 0, 3, 4)
            yield _gemm_dtype(x.reshape(self.slices, size, -1))

    def entries(self, t: torch.Tensor) -> int:
        count = t.shape[self.axis] if self.index is None else len(self.index)
        return t.numel() // t.shape[self.axis] * count


class _Layout:
    """Where every permutable group's units sit in the two state dicts, as index tensors, so
    that applying all groups' permutations to a tensor is one gather per axis, and a group's
    similarity one matrix product per (tensor, axis) — whatever the number of slices. It
    keeps no copy of either model's weights: products, signatures and norms go through the
    tensors a piece at a time (:data:`_CHUNK`)."""

    def __init__(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> None:
        groups = [g for g in spec.permutable if g.kind != "heads"]  # heads: see head_view
        self.state_a, self.state_b = state_a, state_b
        self.size = {g.name: g.size for g in groups}
        self.offset, at = {}, 0
        for g in groups:
            self.offset[g.name], at = at, at + g.size
        self.total_units = at
        owned = defaultdict(list)  # (tensor, axis) -> [(positions, global unit ids, inner)]
        blocks = defaultdict(list)  # (group, tensor, axis, inner) -> slice starts
        for g in groups:
            for sl in g.slices:
                if not state_a[sl.tensor].is_floating_point():
                    continue
                units = torch.arange(g.size).repeat_interleave(sl.inner)
                positions = sl.start + torch.arange(g.size * sl.inner)
                owned[sl.tensor, sl.axis].append((positions, units + self.offset[g.name], sl.inner))
                blocks[g.name, sl.tensor, sl.axis, sl.inner].append(sl.start)
        self.owned = {  # (tensor, axis) -> (positions, their units' global ids, their inner)
            key: (
                torch.cat([p for p, _, _ in parts]),
                torch.cat([u for _, u, _ in parts]),
                torch.cat([torch.full((len(p),), inner) for p, _, inner in parts]),
            )
            for key, parts in owned.items()
        }
        self.axes = defaultdict(list)  # tensor -> the axes groups own positions on
        for tensor, axis in self.owned:
            self.axes[tensor].append(axis)
        self.blocks: dict[str, list[_Block]] = defaultdict(list)
        for (name, tensor, axis, inner), starts in blocks.items():
            span = torch.arange(self.size[name] * inner)
            index = torch.cat([s + span for s in starts])
            if len(starts) == 1 and starts[0] == 0 and len(index) == state_a[tensor].shape[axis]:
                index = None  # the whole axis: pieces are views, not gathers
            self.blocks[name].append(_Block(tensor, axis, index, len(starts), inner))
        # A block's product depends only on the permutations of the groups on its tensor's
        # other axes: each group's blocks are summed by those groups, and each sum is kept
        # with their moves, to be reused until one of them moves again.
        owners = defaultdict(set)  # (tensor, axis) -> the groups owning positions on it
        for g in groups:
            for sl in g.slices:
                owners[sl.tensor, sl.axis].add(g.name)
        self.depends: dict[str, dict[tuple[str, ...], list[int]]] = {}
        self.entries: dict[tuple[str, tuple[str, ...]], int] = defaultdict(int)
        for name, bl in self.blocks.items():
            by = self.depends[name] = {}
            for i, b in enumerate(bl):
                deps = tuple(
                    sorted(set().union(*(owners[b.tensor, ax] for ax in self.axes[b.tensor] if ax != b.axis)))
                )
                by.setdefault(deps, []).append(i)
                self.entries[name, deps] += b.entries(state_a[b.tensor])
        # the parts, least recently used first, within a budget: every group's part kept would
        # be a matrix of units² per weight, as large as the model for a deep MLP
        self._parts: OrderedDict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        weights = sum(
            s[t].numel() * s[t].element_size()
            for t in {b.tensor for bl in self.blocks.values() for b in bl}
            for s in (state_a, state_b)
        )
        self._budget = max(_KEPT * weights, _KEPT_MIN)
        self._kept_bytes = 0
        self._squares: dict[str, tuple[float, float]] | None = None  # per tensor: ‖A‖², ‖B‖²
        # groups permuting some tensor on two axes, and each group's neighbours: the groups
        # whose moves change its similarity (itself only when it is quadratic)
        self.quadratic = {
            name
            for name, bl in self.blocks.items()
            if len({(b.tensor, b.axis) for b in bl}) > len({b.tensor for b in bl})
        }
        touching = defaultdict(set)
        for name, bl in self.blocks.items():
            for b in bl:
                touching[b.tensor].add(name)
        self.neighbours = {
            name: set().union(*(touching[b.tensor] for b in bl)) - ({name} - self.quadratic)
            for name, bl in self.blocks.items()
        }

    def _deltas(self, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per global unit id, how far its permutation moves it, in units."""
        d = torch.zeros(self.total_units, dtype=torch.long)
        for name, off in self.offset.items():
            p = perms.get(name)
            if p is not None:
                d[off : off + self.size[name]] = torch.as_tensor(p, dtype=torch.long).cpu() - torch.arange(
                    self.size[name]
                )
        return d

    def _order(self, name: str, deltas: torch.Tensor, axis: int) -> torch.Tensor | None:
        """Which position of model B's tensor ``name`` every group's permutation puts at each
        position along ``axis`` (None: none moves)."""
        if (name, axis) not in self.owned:
            return None
        positions, units, inner = self.owned[name, axis]
        step = deltas[units] * inner
        if not step.any():
            return None
        index = torch.arange(self.state_b[name].shape[axis])
        index[positions] = positions + step
        return index

    def _maps(self, name: str, deltas: torch.Tensor, axis: int) -> dict[str, torch.Tensor | None]:
        """Model B's tensor ``name`` with every group's permutation applied on all its axes but
        ``axis``, as the order of its outer and rest entries (:func:`_pieces`; None: as is)."""
        shape = self.state_b[name].shape
        moved = {ax: self._order(name, deltas, ax) for ax in self.axes.get(name, ()) if ax != axis}

        def flat(axes: range) -> torch.Tensor | None:
            if all(moved.get(ax) is None for ax in axes):
                return None
            m = torch.zeros(1, dtype=torch.long)
            for ax in axes:
                order = moved.get(ax)
                order = torch.arange(shape[ax]) if order is None else order
                m = (m[:, None] * shape[ax] + order[None, :]).reshape(-1)
            return m

        return {"outer_map": flat(range(axis)), "rest_map": flat(range(axis + 1, len(shape)))}

    def similarity(
        self, name: str, perms: Mapping[str, torch.Tensor], skip: Collection[str] = ()
    ) -> torch.Tensor:
        """(units of A) x (units of B) similarity of group ``name``, the others at ``perms``
        (and, for a group that permutes a tensor on two axes, itself on the other axis: the
        objective linearized at ``perms``); ``skip``: leave out the weights whose other axes
        any of these groups own."""
        size = self.size[name]
        m = None
        deltas = self._deltas(perms)
        for deps, members in self.depends.get(name, {}).items():
            if not skip or set(skip).isdisjoint(deps):
                moves = torch.cat(
                    [deltas[self.offset[d] : self.offset[d] + self.size[d]] for d in deps] or [deltas[:0]]
                )
                kept = self._parts.pop((name, deps), None)
                if kept is None or not torch.equal(kept[0], moves):
                    kept = (moves, self._blocks_product(name, members, deltas))
                self._keep((name, deps), kept)
                part = kept[1].cpu()
                # a copy: a float64 model's part is the kept tensor itself, which must not change
                m = part.to(torch.float64, copy=True) if m is None else m.add_(part)
        if m is None:
            return torch.zeros(size, size, dtype=torch.float64)
        return m

    def forget(self) -> None:
        """Drop the kept parts."""
        self._parts.clear()
        self._kept_bytes = 0

    def _keep(self, key: tuple[str, tuple[str, ...]], kept: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep a part, the most recently used last, dropping the least recently used ones
        beyond :data:`_KEPT` of both models' bytes (not less than :data:`_KEPT_MIN`)."""
        self._parts[key] = kept
        self._kept_bytes = sum(k[1].numel() * k[1].element_size() for k in self._parts.values())
        while self._kept_bytes > self._budget and len(self._parts) > 1:
            _, (_, dropped) = self._parts.popitem(last=False)
            self._kept_bytes -= dropped.numel() * dropped.element_size()
        if self._kept_bytes > self._budget:
            self._parts.clear()

    def _blocks_product(self, name: str, members: list[int], deltas: torch.Tensor) -> torch.Tensor:
        """Σ over the blocks ``members`` of group ``name`` of ⟨units of A, units of B⟩, B's
        tensors permuted by ``deltas`` on their other axes."""
        size, m = self.size[name], None
        for i in members:
            block = self.blocks[name][i]
            maps = self._maps(block.tensor, deltas, block.axis)
            pieces_a = block.units(self.state_a[block.tensor], size)
            for ua, ub in zip(pieces_a, block.units(self.state_b[block.tensor], size, **maps)):
                part = ua[0] @ ub[0].T if block.slices == 1 else torch.bmm(ua, ub.transpose(1, 2)).sum(0)
                m = part if m is None else m.add_(part.to(m.dtype))
        return m

    def _dot(self, tensor: str, deltas: torch.Tensor | None = None, which: str = "ab") -> float:
        """⟨A, PB⟩ of one tensor in float64, B permuted by ``deltas`` on every axis; ``which``
        "aa" or "bb": a model's squared norm."""
        x = (self.state_a if which[0] == "a" else self.state_b)[tensor]
        y = (self.state_a if which[1] == "a" else self.state_b)[tensor]
        x, y = (x.reshape(1), y.reshape(1)) if x.dim() == 0 else (x, y)
        if x.numel() <= _CHUNK:  # one piece: B permuted axis by axis
            for axis in self.axes.get(tensor, ()) if deltas is not None else ():
                order = self._order(tensor, deltas, axis)
                y = y if order is None else y.index_select(axis, order.to(y.device))
            return float(torch.dot(x.reshape(-1).double(), y.reshape(-1).double()))
        index, rest_map = None, None
        if deltas is not None:
            index, rest_map = self._order(tensor, deltas, 0), self._maps(tensor, deltas, 0)["rest_map"]
        total = 0.0
        for px, py in zip(_pieces(x, 0), _pieces(y, 0, index, rest_map=rest_map)):
            total += float(torch.dot(px.reshape(-1).double(), py.reshape(-1).double()))
        return total

    def same_norms(self) -> bool:
        """Whether every tensor the groups touch has the same norm in both models (within
        rounding), as a permuted copy has."""
        return all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30) for a, b in self._norms().values())

    def _norms(self) -> dict[str, tuple[float, float]]:
        if self._squares is None:
            self._squares = {t: (self._dot(t, which="aa"), self._dot(t, which="bb")) for t in self.tensors()}
        return self._squares

    def tensors(self) -> list[str]:
        """The tensors the groups touch."""
        return sorted({b.tensor for bl in self.blocks.values() for b in bl})

    def bound(self) -> float:
        """‖θ_A‖·‖θ_B‖ over the tensors the groups touch: the objective's Cauchy–Schwarz bound."""
        norms = self._norms().values()
        return (sum(a for a, _ in norms) * sum(b for _, b in norms)) ** 0.5

    def objective(self, name: str, perms: Mapping[str, torch.Tensor]) -> float:
        """Σ ⟨θ_A, Pθ_B⟩ over the tensors group ``name`` touches, every permutation applied."""
        deltas = self._deltas(perms)
        return sum(self._dot(t, deltas) for t in sorted({b.tensor for b in self.blocks[name]}))

    def total(self, perms: Mapping[str, torch.Tensor]) -> float:
        """Σ ⟨θ_A, Pθ_B⟩ over every tensor the groups touch."""
        deltas = self._deltas(perms)
        return sum(self._dot(t, deltas) for t in self.tensors())

    def signature(self, name: str, which: str) -> torch.Tensor | None:
        """Per unit and slice, statistics of its sub-tensor's entries that no order of them
        changes — moments 1 to 4, mean magnitude, extremes — each slice scaled to unit RMS so
        that every slice weighs the same (:func:`signature_matching`). Summed over pieces of
        the tensor in float64; only the pieces are copied."""
        state = self.state_a if which == "a" else self.state_b
        size, parts, single = self.size[name], [], []
        for block in self.blocks.get(name, ()):
            t = state[block.tensor]
            if block.entries(t) == size:  # one entry per unit (a bias, a norm's vector): batched below
                single.append(next(block.units(t, size)).reshape(size).double().cpu())
                continue
            sums = torch.zeros(5, block.slices, size, dtype=torch.float64)
            high = torch.full((block.slices, size), -math.inf, dtype=torch.float64)
            low = torch.full((block.slices, size), math.inf, dtype=torch.float64)
            count = 0
            for rows in block.units(t, size):
                square = rows * rows
                sums += (
                    torch.stack([rows, square, square * rows, square * square, rows.abs()])
                    .sum(3)
                    .double()
                    .cpu()
                )
                lo, hi = torch.aminmax(rows, dim=2)
                high, low = torch.maximum(high, hi.double().cpu()), torch.minimum(low, lo.double().cpu())
                count += rows.shape[2]
            means = sums / max(count, 1)
            scale = means[1].mean(1, keepdim=True).sqrt()  # each slice's RMS
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            powers = [means[k] / scale ** (k + 1) for k in range(4)]
            feats = torch.stack([*powers, means[4] / scale, high / scale, low / scale], 2)
            parts.append(feats.transpose(0, 1).reshape(size, -1))
        if single:  # the same statistics of one entry: its powers, magnitude, and itself twice
            x = torch.stack(single)
            scale = x.square().mean(1, keepdim=True).sqrt()
            x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
            feats = torch.stack([x, x**2, x**3, x**4, x.abs(), x, x], 2)
            parts.append(feats.transpose(0, 1).reshape(size, -1))
        return torch.cat(parts, 1) if parts else None


def _gemm_dtype(t: torch.Tensor) -> torch.Tensor:
    """float32 products (float64 models stay float64); a group's matrix is summed over its
    blocks in that precision and returned in float64."""
    return t if t.dtype == torch.float64 else t.float()
