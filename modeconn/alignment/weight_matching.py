"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2): permutations that maximize
Σ ⟨θ_A, Pθ_B⟩ over every tensor a spec touches, by coordinate descent over groups."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from modeconn.alignment.assignment import solve_assignments
from modeconn.alignment.attention_heads import HeadStructure, HeadView, head_view
from modeconn.symmetry.spec import Group, PermutationSpec

__all__ = ["TOL", "WeightSimilarity", "match_weights", "weight_similarity", "signature_matching"]

TOL = 1e-4
"""Weight matching stops when a sweep raises Σ ⟨θ_A, Pθ_B⟩ by less than this fraction of its
bound ‖θ_A‖·‖θ_B‖: later sweeps move a few units each, for gains of ~1e-5 per sweep
(measured on random-init timm mobilenetv3_large_100; docs/align.md)."""


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
) -> dict[str, torch.Tensor]:
    """Solve one linear assignment per group with the other groups' permutations held fixed,
    in a seeded random order, until a full sweep changes nothing or raises the objective by
    less than ``tol`` times its bound ‖θ_A‖·‖θ_B‖ (``tol=0``: until nothing changes), or after
    ``max_iter`` sweeps. Attention heads are matched by the best assignment of their units,
    then units within matched heads (:mod:`modeconn.alignment.attention_heads`).

    ``groups`` restricts which groups are updated (default: all permutable groups); ``init``
    gives starting permutations, and the updated groups it leaves out start from
    :func:`signature_matching` (exact when B is a permutation of A). Returns permutations for
    every permutable group, ``perms[g][i]`` = the unit of B moved to position ``i``.
    ``heads``: ``spec`` is already the flat view of a spec (:func:`head_view`), whose flat
    groups are solved with their structure and returned as they are.
    """
    original = spec if heads is None else None
    if heads is None:
        heads = head_view(spec)
        if groups is not None:
            groups = heads.groups_for(groups)
        init = heads.flatten(init) if init else init
    spec = heads.spec
    flat = heads.flat
    todo = list(groups) if groups is not None else [g for g in spec.permutable if g.kind != "heads"]
    layout = _Layout(spec, state_a, state_b)
    perms = {g.name: torch.arange(g.size) for g in spec.permutable}
    init = dict(init or {})
    start = _signature_matching(layout, [g for g in todo if g.name not in init and g.name not in flat])
    for structure in {flat[g.name][0] for g in todo if g.name in flat and g.name not in init}:
        mats = {}
        for f in structure.families:
            sa, sb = layout.signature(f.name, "a"), layout.signature(f.name, "b")
            mats[f.name] = -torch.cdist(sa, sb).square() if sa is not None else torch.zeros(f.block, f.block)
        start.update(heads.solve(structure, mats, maximize=True))
    perms.update(start)
    perms.update({k: torch.as_tensor(v, dtype=torch.long).cpu() for k, v in init.items() if k in perms})
    # A group's matrix depends only on its neighbours' permutations (and on its own when it
    # permutes a tensor on two axes): a group none of them has moved since it was last solved
    # would get the same assignment again, so it is skipped.
    stale = {g.name for g in todo}
    gen = torch.Generator().manual_seed(seed)
    bound = layout.bound()
    width = max(1, torch.get_num_threads())
    for _ in range(max_iter):
        gain = 0.0
        # Groups of a sweep that are not neighbours of each other are solved together (their
        # assignments on threads): none changes another's matrix or staleness, so this is the
        # same sequence of steps as one group at a time in the sweep's order.
        batch: list[Group] = []
        for gi in torch.randperm(len(todo), generator=gen).tolist():
            g = todo[gi]
            alone = g.name in flat or g.name in layout.quadratic
            if batch and (alone or len(batch) == width or _touches(layout, g, batch)):
                gain += _steps(layout, batch, perms, stale)
                batch = []
            if g.name not in stale:
                continue
            if g.name in flat:  # a head structure: all its families at once
                gain += _heads_step(layout, heads, flat[g.name][0], perms, stale)
            elif alone:
                gain += _steps(layout, [g], perms, stale)
            else:
                batch.append(g)
        gain += _steps(layout, batch, perms, stale)
        if gain == 0.0 or gain < tol * bound:
            break
    return heads.expand(perms) if original is not None else perms


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
    names = [f.name for f in structure.families]
    stale.difference_update(names)
    mats = {n: layout.similarity(n, perms) for n in names}
    new = heads.solve(structure, mats, maximize=True)
    if all(torch.equal(new[n], perms[n]) for n in names):
        return 0.0
    trial = {**perms, **new}
    if any(n in layout.quadratic for n in names):
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


@dataclass(frozen=True)
class _Block:
    """All slices of one group along one axis of one tensor that share an ``inner``: gathering
    ``index`` along ``axis`` puts them side by side as (outer, slices, units, inner, rest)."""

    tensor: str
    axis: int
    index: torch.Tensor
    slices: int
    inner: int

    def units(self, t: torch.Tensor, size: int) -> torch.Tensor:
        """(slices, units, outer · inner · rest) of ``t``, every slice's units as rows."""
        outer, rest = math.prod(t.shape[: self.axis]), math.prod(t.shape[self.axis + 1 :])
        x = t.index_select(self.axis, self.index.to(t.device))
        x = x.reshape(outer, self.slices, size, self.inner, rest).permute(1, 2, 0, 3, 4)
        return x.reshape(self.slices, size, -1)


class _Layout:
    """Where every permutable group's units sit in the two state dicts, as index tensors, so
    that applying all groups' permutations to a tensor is one gather per axis, and a group's
    similarity one matrix product per (tensor, axis) — whatever the number of slices."""

    def __init__(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> None:
        groups = [g for g in spec.permutable if g.kind != "heads"]  # heads: see head_view
        self.state_a, self.state_b = state_a, state_b
        self.size = {g.name: g.size for g in groups}
        self.offset, at = {}, 0
        for g in groups:
            self.offset[g.name], at = at, at + g.size
        self.total = at
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
            self.blocks[name].append(_Block(tensor, axis, index, len(starts), inner))
        self._units_a: dict[tuple[str, int], torch.Tensor] = {}
        # A block's product depends only on the permutations of the groups on its tensor's
        # other axes: each group's blocks are summed by those groups, and each sum is kept
        # with their moves, to be reused until one of them moves again.
        owners = defaultdict(set)  # (tensor, axis) -> the groups owning positions on it
        for g in groups:
            for sl in g.slices:
                owners[sl.tensor, sl.axis].add(g.name)
        self._depends: dict[str, dict[tuple[str, ...], list[int]]] = {}
        for name, bl in self.blocks.items():
            by = self._depends[name] = {}
            for i, b in enumerate(bl):
                deps = set().union(*(owners[b.tensor, ax] for ax in self.axes[b.tensor] if ax != b.axis))
                by.setdefault(tuple(sorted(deps)), []).append(i)
        self._parts: dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
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
        d = torch.zeros(self.total, dtype=torch.long)
        for name, off in self.offset.items():
            p = perms.get(name)
            if p is not None:
                d[off : off + self.size[name]] = torch.as_tensor(p, dtype=torch.long).cpu() - torch.arange(
                    self.size[name]
                )
        return d

    def _permuted(self, name: str, deltas: torch.Tensor, skip_axis: int | None = None) -> torch.Tensor:
        """Model B's tensor ``name`` with every group's permutation applied (on all its axes but
        ``skip_axis``)."""
        t = self.state_b[name]
        for axis in self.axes.get(name, ()):
            if axis == skip_axis:
                continue
            positions, units, inner = self.owned[name, axis]
            index = torch.arange(t.shape[axis])
            index[positions] = positions + deltas[units] * inner
            t = t.index_select(axis, index.to(t.device))
        return t

    def similarity(self, name: str, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(units of A) x (units of B) similarity of group ``name``, the others at ``perms``
        (and, for a group that permutes a tensor on two axes, itself on the other axis: the
        objective linearized at ``perms``)."""
        size = self.size[name]
        m = None
        deltas = self._deltas(perms)
        for deps, members in self._depends.get(name, {}).items():
            moves = torch.cat(
                [deltas[self.offset[d] : self.offset[d] + self.size[d]] for d in deps] or [deltas[:0]]
            )
            kept = self._parts.get((name, deps))
            if kept is None or not torch.equal(kept[0], moves):
                kept = (moves, self._blocks_product(name, members, deltas))
                self._parts[name, deps] = kept
            m = kept[1].clone() if m is None else m.add_(kept[1].to(m.dtype))
        if m is None:
            return torch.zeros(size, size, dtype=torch.float64)
        return m.double().cpu()

    def _blocks_product(self, name: str, members: list[int], deltas: torch.Tensor) -> torch.Tensor:
        """Σ over the blocks ``members`` of group ``name`` of ⟨units of A, units of B⟩, B's
        tensors permuted by ``deltas`` on their other axes."""
        size, m = self.size[name], None
        for i in members:
            block = self.blocks[name][i]
            key = (name, i)
            if key not in self._units_a:
                self._units_a[key] = _gemm_dtype(block.units(self.state_a[block.tensor], size))
            ua = self._units_a[key]
            ub = _gemm_dtype(block.units(self._permuted(block.tensor, deltas, block.axis), size))
            part = ua[0] @ ub[0].T if block.slices == 1 else torch.bmm(ua, ub.transpose(1, 2)).sum(0)
            m = part if m is None else m.add_(part.to(m.dtype))
        return m

    def bound(self) -> float:
        """‖θ_A‖·‖θ_B‖ over the tensors the groups touch: the objective's Cauchy–Schwarz bound."""
        tensors = {b.tensor for bl in self.blocks.values() for b in bl}
        norm = {
            w: sum(float(s[t].double().square().sum()) for t in tensors)
            for w, s in (("a", self.state_a), ("b", self.state_b))
        }
        return (norm["a"] * norm["b"]) ** 0.5

    def objective(self, name: str, perms: Mapping[str, torch.Tensor]) -> float:
        """Σ ⟨θ_A, Pθ_B⟩ over the tensors group ``name`` touches, every permutation applied."""
        deltas = self._deltas(perms)
        total = 0.0
        for tensor in sorted({b.tensor for b in self.blocks[name]}):
            total += float((self.state_a[tensor].double() * self._permuted(tensor, deltas).double()).sum())
        return total

    def signature(self, name: str, which: str) -> torch.Tensor | None:
        """Per unit and slice, statistics of its sub-tensor's entries that no order of them
        changes — moments 1 to 4, mean magnitude, extremes — each slice scaled to unit RMS so
        that every slice weighs the same (:func:`signature_matching`)."""
        state = self.state_a if which == "a" else self.state_b
        size, parts = self.size[name], []
        for block in self.blocks.get(name, ()):
            rows = _gemm_dtype(block.units(state[block.tensor], size))
            square = rows * rows
            scale = square.mean((1, 2), keepdim=True).sqrt()
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            rows, square = rows / scale, square / (scale * scale)
            powers = [rows.mean(2), square.mean(2), (square * rows).mean(2), (square * square).mean(2)]
            feats = torch.stack([*powers, rows.abs().mean(2), rows.amax(2), rows.amin(2)], 2)
            parts.append(feats.transpose(0, 1).reshape(size, -1).double().cpu())
        return torch.cat(parts, 1) if parts else None


def _gemm_dtype(t: torch.Tensor) -> torch.Tensor:
    """float32 products (float64 models stay float64); a group's matrix is summed over its
    blocks in that precision and returned in float64."""
    return t if t.dtype == torch.float64 else t.float()
