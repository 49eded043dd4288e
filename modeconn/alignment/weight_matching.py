"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2): permutations that maximize
Σ ⟨θ_A, Pθ_B⟩ over every tensor a spec touches, by coordinate descent over groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from modeconn.alignment.assignment import solve_assignment
from modeconn.symmetry.spec import Group, PermutationSpec, TensorSlice, unit_positions, unit_view

__all__ = ["match_weights", "weight_similarity", "signature_matching"]


def match_weights(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    *,
    groups: Sequence[Group] | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> dict[str, torch.Tensor]:
    """Solve one linear assignment per group with the other groups' permutations held fixed,
    in a seeded random order, until a full sweep changes nothing.

    ``groups`` restricts which groups are updated (default: all permutable groups); ``init``
    gives starting permutations (default: :func:`signature_matching`, which is exact when B is
    a permutation of A). Returns permutations for every permutable group, ``perms[g][i]`` =
    the unit of B moved to position ``i``.
    """
    todo = list(groups) if groups is not None else spec.permutable
    perms = {g.name: torch.arange(g.size) for g in spec.permutable}
    if init is None:
        init = signature_matching(spec, state_a, state_b, todo)
    perms.update({k: torch.as_tensor(v, dtype=torch.long).cpu() for k, v in init.items() if k in perms})
    sizes = {g.name: g.size for g in spec.permutable}
    by_tensor: dict[str, list[tuple[str, TensorSlice]]] = {}
    for g in spec.permutable:
        for sl in g.slices:
            by_tensor.setdefault(sl.tensor, []).append((g.name, sl))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        changed = False
        for gi in torch.randperm(len(todo), generator=gen).tolist():
            g = todo[gi]
            m = _similarity(g, state_a, state_b, perms, sizes, by_tensor)
            new = solve_assignment(m, maximize=True)
            if torch.equal(new, perms[g.name]):
                continue
            # The assignment maximizes the objective as linear in this group's permutation; a
            # tensor the group permutes on two axes (a recurrent or tied square weight) makes
            # it quadratic, so a move is kept only if the true objective grows.
            tensors = sorted({sl.tensor for sl in g.slices})
            before = _objective(tensors, state_a, state_b, perms, sizes, by_tensor)
            trial = {**perms, g.name: new}
            after = _objective(tensors, state_a, state_b, trial, sizes, by_tensor)
            if after > before + 1e-12 * max(abs(before), 1.0):
                perms = trial
                changed = True
        if not changed:
            break
    return perms


def _objective(tensors, state_a, state_b, perms, sizes, by_tensor) -> float:
    """Σ ⟨θ_A, Pθ_B⟩ over ``tensors``, every group's permutation applied."""
    total = 0.0
    for name in tensors:
        a, b = state_a[name], state_b[name]
        if a.is_floating_point():
            b = _permute_except(b, by_tensor[name], perms, sizes, skip=None)
            total += float((a.double() * b.double()).sum())
    return total


def weight_similarity(
    spec: PermutationSpec,
    group: Group,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    perms: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Σ over the group's slices of ⟨unit i of A, unit j of B⟩, with every other group of B at
    its permutation in ``perms``: the matrix weight matching maximizes for one group."""
    sizes = {g.name: g.size for g in spec.permutable}
    by_tensor: dict[str, list[tuple[str, TensorSlice]]] = {}
    for g in spec.permutable:
        for sl in g.slices:
            by_tensor.setdefault(sl.tensor, []).append((g.name, sl))
    full = {g.name: torch.as_tensor(perms.get(g.name, torch.arange(g.size))) for g in spec.permutable}
    return _similarity(group, state_a, state_b, full, sizes, by_tensor)


def _similarity(g: Group, state_a, state_b, perms, sizes, by_tensor) -> torch.Tensor:
    m = torch.zeros(g.size, g.size, dtype=torch.float64)
    for sl in g.slices:
        a, b = state_a[sl.tensor], state_b[sl.tensor]
        if not a.is_floating_point():
            continue
        b = _permute_except(b, by_tensor[sl.tensor], perms, sizes, skip=g.name)
        m += _units(a, sl, g.size) @ _units(b, sl, g.size).T
    return m


def _units(t: torch.Tensor, sl: TensorSlice, size: int) -> torch.Tensor:
    """(units, everything else) for one slice, in float64; A and B are flattened alike, so
    their rows can be compared by dot products."""
    return unit_view(t, sl.axis, sl.start, sl.inner, size).transpose(0, 1).reshape(size, -1).double().cpu()


def _permute_except(t, slices, perms, sizes, skip: str) -> torch.Tensor:
    """``t`` with every group's current permutation applied, except group ``skip``'s."""
    index: dict[int, torch.Tensor] = {}
    for name, sl in slices:
        if name == skip:
            continue
        idx = index.setdefault(sl.axis, torch.arange(t.shape[sl.axis]))
        idx[sl.start : sl.start + sizes[name] * sl.inner] = unit_positions(perms[name], sl.start, sl.inner)
    for axis, idx in index.items():
        t = t.index_select(axis, idx.to(t.device))
    return t


def signature_matching(
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    groups: Sequence[Group] | None = None,
) -> dict[str, torch.Tensor]:
    """Match each group's units by what no other group's permutation can change: within each
    slice, the sorted entries of a unit's sub-tensor (other groups only move entries inside it).
    When B is a permutation of A, corresponding units have equal signatures, so the match is
    exact — a start from which coordinate descent cannot be trapped."""
    out = {}
    for g in groups if groups is not None else spec.permutable:
        sa, sb = _signature(g, state_a), _signature(g, state_b)
        if sa is None:
            continue
        out[g.name] = solve_assignment(torch.cdist(sa, sb).square(), maximize=False)
    return out


def _signature(g: Group, state: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    parts = []
    for sl in g.slices:
        t = state[sl.tensor]
        if not t.is_floating_point():
            continue
        rows = _units(t, sl, g.size).sort(dim=1).values
        scale = rows.square().mean().sqrt()
        parts.append(rows / scale if scale > 0 else rows)  # every slice weighs the same
    return torch.cat(parts, 1) if parts else None
