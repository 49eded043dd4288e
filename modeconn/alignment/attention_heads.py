"""Aligning attention heads: heads matched by a cost over heads, then units within matched heads.

A head group (``kind == "heads"``) moves whole heads; inside each head, other groups permute
its units (one family for q·k dims, one for v·o dims, each head its own group, or one shared
by all heads, or fixed by rotary embeddings). For alignment a head group and the groups
inside it become one *flat* group per family, of ``heads × units per head`` units, whose cost
matrices (correlation, weight similarity, ...) are computed as for any group. A flat group is
solved with its structure: the value of pairing head ``a`` of A with head ``b`` of B is the
best assignment of their units (or their diagonal, for fixed units), summed over families;
heads are assigned on those values, then units within each matched pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from modeconn.alignment.assignment import solve_assignment
from modeconn.symmetry.spec import Group, Perms, PermutationSpec, Site, TensorSlice

__all__ = ["HeadFamily", "HeadStructure", "HeadView", "head_view"]


@dataclass(frozen=True)
class HeadFamily:
    """One family of units inside a head group's heads: ``pieces`` are the (offset, size)
    ranges of a head's block, ``groups[h][p]`` the group permuting piece ``p`` of head ``h``."""

    name: str
    block: int
    pieces: tuple[tuple[int, int], ...]
    groups: tuple[tuple[str | None, ...], ...]  # None: a piece no group permutes (a tensor along the heads)
    permutable: tuple[bool, ...]  # per piece (the same for every head)

    def kind(self, p: int) -> str:
        """``"free"`` (each head its own group), ``"shared"`` (one group) or ``"fixed"``."""
        if not self.permutable[p]:
            return "fixed"
        return "shared" if len({g[p] for g in self.groups}) == 1 else "free"


@dataclass(frozen=True)
class HeadStructure:
    """A head group and its families; ``external`` names the groups shared by all heads that
    also permute tensors outside them (a head's units that are the residual stream's
    channels): they stay in the view with their other slices and are solved with the heads."""

    heads: str
    size: int
    families: tuple[HeadFamily, ...]
    external: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The view groups solved with this structure: its flat groups, then its external ones."""
        return (*(f.name for f in self.families), *self.external)


@dataclass(frozen=True)
class HeadView:
    """A spec with its movable head groups flattened (:func:`head_view`), and the way back."""

    spec: PermutationSpec
    structures: tuple[HeadStructure, ...]

    @property
    def flat(self) -> dict[str, tuple[HeadStructure, HeadFamily]]:
        """Flat group name -> its head structure and family."""
        return {f.name: (s, f) for s in self.structures for f in s.families}

    @property
    def joint(self) -> dict[str, HeadStructure]:
        """Every view group solved with a head structure (its flat groups and its external
        groups) -> the structure."""
        return {n: s for s in self.structures for n in s.names}

    def solve(
        self, structure: HeadStructure, matrices: Mapping[str, torch.Tensor], maximize: bool
    ) -> dict[str, torch.Tensor]:
        """The flat permutations of one head structure's families from their matrices. Pieces
        that one group permutes in each head (a value head's dims, which grouped-query
        attention's output projection repeats for every query head sharing it) are assigned
        once, on the sum of their matrices."""
        n = structure.size
        slots: dict[tuple[str, ...], list[torch.Tensor]] = {}  # a piece's groups, head by head -> blocks
        value = torch.zeros(n, n, dtype=torch.float64)
        for f in structure.families:
            m = matrices[f.name].double()
            for p, (off, size) in enumerate(f.pieces):
                blocks = _blocks(m, n, f.block, off, size)  # (a, b, size, size)
                if f.kind(p) == "fixed":
                    value += blocks.diagonal(dim1=2, dim2=3).sum(-1)
                else:
                    slots.setdefault(_slot(f, p), []).append(blocks)
        sums = {key: sum(blocks) for key, blocks in slots.items()}
        pairs: dict[tuple[tuple[str, ...], int, int], torch.Tensor] = {}  # each head pair's own assignment
        for key, blocks in sums.items():
            if len(set(key)) == 1:
                continue  # one group shared by all heads: assigned once the heads are
            for a in range(n):
                for b in range(n):
                    perm = pairs[key, a, b] = solve_assignment(blocks[a, b], maximize=maximize)
                    value[a, b] += blocks[a, b][torch.arange(len(perm)), perm].sum()
        sigma = solve_assignment(value, maximize=maximize)
        shared = {
            key: solve_assignment(
                sum(blocks[a, sigma[a]] for a in range(n)) + _outside(matrices, structure, key[0]),
                maximize=maximize,
            )
            for key, blocks in sums.items()
            if len(set(key)) == 1
        }
        out = {key[0]: perm for key, perm in shared.items() if key[0] in structure.external}
        for f in structure.families:
            flat = torch.empty(n * f.block, dtype=torch.long)
            for p, (off, size) in enumerate(f.pieces):
                key = _slot(f, p)
                for a in range(n):
                    b = int(sigma[a])
                    if f.kind(p) == "fixed":
                        inner = torch.arange(size)
                    elif key in shared:
                        inner = shared[key]
                    else:
                        inner = pairs[key, a, b]
                    flat[a * f.block + off + torch.arange(size)] = b * f.block + off + inner
            out[f.name] = flat
        return out

    def _members(self, s: HeadStructure) -> set[str]:
        return {s.heads} | {g for f in s.families for head in f.groups for g in head}

    def groups_for(self, groups: Sequence[Group]) -> list[Group]:
        """The view's groups standing for ``groups`` of the original spec (a head group or a
        group inside heads stands for its structure's flat groups)."""
        names = {g.name for g in groups}
        out = [self.spec.groups[n] for n in names if n in self.spec.groups]
        for s in self.structures:
            if names & self._members(s):
                out += [self.spec.groups[f.name] for f in s.families]
        return sorted(set(out), key=lambda g: list(self.spec.groups).index(g.name))

    def flatten(self, perms: Mapping[str, torch.Tensor]) -> Perms:
        """The view's permutations from the original spec's (inverse of :meth:`expand`)."""
        out = {k: v for k, v in perms.items() if k in self.spec.groups}
        for s in self.structures:
            if not set(perms) & self._members(s):
                continue
            sigma = torch.as_tensor(perms.get(s.heads, torch.arange(s.size)), dtype=torch.long)
            for f in s.families:
                flat = torch.empty(s.size * f.block, dtype=torch.long)
                for a in range(s.size):
                    b = int(sigma[a])
                    for p, (off, size) in enumerate(f.pieces):
                        inner = perms.get(f.groups[b][p]) if f.kind(p) != "fixed" else None
                        inner = (
                            torch.arange(size) if inner is None else torch.as_tensor(inner, dtype=torch.long)
                        )
                        flat[a * f.block + off + torch.arange(size)] = b * f.block + off + inner
                out[f.name] = flat
        return out

    def expand(self, perms: Mapping[str, torch.Tensor]) -> Perms:
        """Permutations of the original spec's groups from the flat view's."""
        out = {k: v for k, v in perms.items() if k not in self.flat}
        for s in self.structures:
            sigma = None
            for f in s.families:
                flat = perms.get(f.name)
                if flat is None:
                    continue
                heads = flat.view(s.size, f.block)[:, 0] // f.block
                sigma = heads if sigma is None else sigma
                for p, (off, size) in enumerate(f.pieces):
                    if f.kind(p) == "fixed":
                        continue
                    for a in range(s.size):
                        b = int(heads[a])
                        out[f.groups[b][p]] = (
                            flat[a * f.block + off : a * f.block + off + size] - b * f.block - off
                        )
            if sigma is not None:
                out[s.heads] = sigma
        return out


def _outside(
    matrices: Mapping[str, torch.Tensor], structure: HeadStructure, name: str
) -> torch.Tensor | float:
    """An external group's matrix over its slices outside the heads (0 for the others)."""
    m = matrices.get(name) if name in structure.external else None
    return 0.0 if m is None else m.double()


def _slot(f: HeadFamily, p: int) -> tuple[str, ...]:
    """The groups permuting piece ``p`` of ``f``, head by head: pieces with the same groups are
    one set of units, assigned together."""
    return tuple(head[p] for head in f.groups)


def _blocks(m: torch.Tensor, n: int, block: int, off: int, size: int) -> torch.Tensor:
    """(head of A, head of B, unit, unit) blocks of one piece of a flat matrix."""
    return m.view(n, block, n, block)[:, off : off + size, :, off : off + size].permute(0, 2, 1, 3)


def head_view(spec: PermutationSpec) -> HeadView:
    """``spec`` with each permutable head group and the groups inside its heads replaced by
    one flat group per family (see the module docstring). A group shared by all heads that
    also permutes tensors outside them stays, with those other slices, and is solved with the
    heads (:attr:`HeadStructure.external`). A head group whose heads hold anything else (units
    shared by some heads only, a head's own group that also moves another tensor) stays as it
    is, and alignment leaves its heads in place."""
    owner_slice: dict[tuple[str, int, int], tuple[Group, int]] = {}
    owner_site: dict[tuple[str, int, int], tuple[Group, int]] = {}
    for g in spec.groups.values():
        if g.kind == "heads":
            continue
        for sl in g.slices:
            owner_slice[sl.tensor, sl.axis, sl.start] = (g, sl.inner)
        for st in g.sites:
            owner_site[st.node, st.axis, st.start] = (g, st.inner)
    groups = {k: g for k, g in spec.groups.items() if g.kind != "heads" or not g.permutable}
    structures, removed, kept = [], set(), {}
    for hg in spec.heads:
        if not hg.permutable:
            continue
        families: dict[tuple, dict] = {}
        ok = True
        for sl in hg.slices:
            found = _family(owner_slice, (sl.tensor, sl.axis), sl.start, sl.inner, hg.size)
            if found is None:
                ok = False
                break
            key, inner = found
            families.setdefault(key, {"slices": [], "sites": [], "inner": []})["slices"].append(
                TensorSlice(sl.tensor, sl.axis, sl.start, inner)
            )
        if not ok or not families:
            groups[hg.name] = hg
            continue
        for st in hg.sites:
            found = _family(owner_site, (st.node, st.axis), st.start, st.inner, hg.size)
            if found is not None and found[0] in families:
                families[found[0]]["sites"].append(Site(st.node, st.axis, st.start, found[1], st.kind))
        fams, flat_groups = [], []
        for i, (key, parts) in enumerate(families.items()):
            pieces, names = key
            block = sum(size for _, size in pieces)
            name = f"{hg.name}/{i}"
            permutable = tuple(_permutable(spec, names[0][p]) for p in range(len(pieces)))
            if any(_permutable(spec, h[p]) != permutable[p] for h in names for p in range(len(pieces))):
                ok = False  # some heads' units fixed, others free
            fams.append(HeadFamily(name, block, pieces, names, permutable))
            flat_groups.append(
                Group(
                    name=name,
                    size=hg.size * block,
                    permutable=True,
                    slices=tuple(parts["slices"]),
                    sites=tuple(parts["sites"]),
                    hidden=False,
                )
            )
        inside = {g for f in fams for head in f.groups for g in head if _permutable(spec, g)}
        outside = {g for g in inside if not _within(spec.groups[g], hg)}
        shared = {f.groups[0][p] for f in fams for p in range(len(f.pieces)) if f.kind(p) == "shared"}
        if not ok or outside - shared:  # a head's own group that also moves something else
            groups[hg.name] = hg
            continue
        groups.update({g.name: g for g in flat_groups})
        removed |= {g for f in fams for head in f.groups for g in head if g is not None} - outside
        for g in outside:
            kept[g] = _without(spec.groups[g], hg)
        structures.append(HeadStructure(hg.name, hg.size, tuple(fams), tuple(sorted(outside))))
    groups = {k: kept.get(k, g) for k, g in groups.items() if k not in removed}
    return HeadView(replace(spec, groups=groups), tuple(structures))


def _covers(heads: Group):
    """A test of whether a slice or site lies in one of ``heads``' ranges."""
    spans: dict[tuple, list[tuple[int, int]]] = {}

    def where(x: TensorSlice | Site) -> tuple:
        return ("tensor", x.tensor, x.axis) if isinstance(x, TensorSlice) else ("node", x.node, x.axis)

    for x in (*heads.slices, *heads.sites):
        spans.setdefault(where(x), []).append((x.start, x.start + heads.size * x.inner))

    def covered(x: TensorSlice | Site) -> bool:
        return any(lo <= x.start < hi for lo, hi in spans.get(where(x), ()))

    return covered


def _within(group: Group, heads: Group) -> bool:
    """Whether every slice and site of ``group`` lies inside ``heads``' ranges: only then do
    the flat groups carry all of it."""
    covered = _covers(heads)
    return all(map(covered, group.slices)) and all(map(covered, group.sites))


def _without(group: Group, heads: Group) -> Group:
    """``group`` less its slices and sites inside ``heads``' ranges (the flat groups hold those)."""
    covered = _covers(heads)
    return replace(
        group,
        slices=tuple(sl for sl in group.slices if not covered(sl)),
        sites=tuple(st for st in group.sites if not covered(st)),
    )


def _permutable(spec: PermutationSpec, name: str | None) -> bool:
    return name is not None and spec.groups[name].permutable


def _family(owner: Mapping, where: tuple, start: int, inner: int, n_heads: int) -> tuple | None:
    """The family of a head group's slice (or site): the pieces of one head's block and the
    groups owning them, per head; a block no group permutes is one fixed piece (a tensor along
    the heads axis: Swin's relative position biases); ``None`` when only some positions of a
    block have an owning group."""
    if not any(owner.get((*where, pos)) for pos in range(start, start + n_heads * inner)):
        return (((0, inner),), ((None,),) * n_heads), 1
    pieces, names, unit_inner = None, [], None
    span = None
    for h in range(n_heads):
        pos, head_pieces, head_names = start + h * inner, [], []
        end = pos + inner
        offset = 0
        while pos < end:
            found = owner.get((*where, pos))
            if found is None:
                return None
            g, i = found
            if unit_inner is None:
                unit_inner = i
            if i != unit_inner:
                return None
            head_pieces.append((offset, g.size))
            head_names.append(g.name)
            offset += g.size
            pos += g.size * i
        if pos != end or (pieces is not None and tuple(head_pieces) != pieces):
            return None
        pieces = tuple(head_pieces)
        names.append(tuple(head_names))
        span = offset
    if span is None or span * unit_inner != inner:
        return None
    permutable_mix = [len({n[p] for n in names}) for p in range(len(pieces))]
    if any(1 < k < n_heads for k in permutable_mix):  # shared by some heads only
        return None
    return (pieces, tuple(names)), unit_inner
