"""Telling apart units that activations cannot: dead ReLUs, units that fire on the same few inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.stats import PairStats
from modeconn.alignment.weight_matching import WeightSimilarity
from modeconn.symmetry.spec import Group, PermutationSpec

__all__ = ["TIE_SCALE", "break_ties", "has_constant_units"]

TIE_SCALE = 1e-4
"""Weight of the tie-breaking term, relative to the largest entry of the cost matrix: above the
float32 noise in the statistics of units that are active on a few samples only (planted
permutations of a briefly trained GoogLeNet put ~1e-5 between such units), below any difference
the data can resolve (a correlation from n samples is uncertain to ~1/√n)."""


def break_ties(
    spec: PermutationSpec,
    groups: Sequence[Group],
    matrices: Mapping[str, torch.Tensor],
    maximize: bool,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    perms: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Each group's assignment of ``matrices`` with a weight-similarity term added, normalized
    to [-1, 1] and scaled by :data:`TIE_SCALE` times the matrix's largest entry, so that units
    with (nearly) equal activation costs are told apart by their weights. A group whose
    assignment wins every row and column of its matrix by more than twice that keeps it (the
    term cannot change it); the others are solved again, and once more where a neighbour's
    assignment changed, since a group's weights are compared through its neighbours'
    permutations."""
    sign = 1.0 if maximize else -1.0
    similarity = WeightSimilarity(spec, state_a, state_b)
    scale = {g.name: TIE_SCALE * float(matrices[g.name].abs().max().clamp_min(1e-300)) for g in groups}
    todo = [g for g in groups if not _dominant(sign * matrices[g.name], perms[g.name], 2 * scale[g.name])]
    for _ in range(2):
        moved: set[str] = set()
        for g in todo:
            w = similarity(g, perms)
            w = w / w.abs().max().clamp_min(1e-300)
            new = solve_assignment(matrices[g.name] + sign * scale[g.name] * w, maximize=maximize)
            if not torch.equal(new, perms[g.name]):
                perms[g.name] = new
                moved.add(g.name)
        todo = [g for g in todo if similarity.neighbours(g) & moved]
    return perms


def _dominant(m: torch.Tensor, perm: torch.Tensor, margin: float) -> bool:
    """Whether assignment ``perm`` (row i to column perm[i]) beats every other entry of its row
    and of its column of similarity ``m`` by more than ``margin``: then it is the only optimum
    of ``m`` plus any term bounded by ``margin / 2`` per entry."""
    rows = torch.arange(m.shape[0])
    chosen = m[rows, perm]
    rest = m.clone()
    rest[rows, perm] = -torch.inf
    # column perm[i] is matched by row i
    return bool((chosen > rest.amax(1) + margin).all() and (chosen > rest.amax(0)[perm] + margin).all())


def has_constant_units(site_stats: Sequence[PairStats]) -> bool:
    """Whether some unit of model A or B has no variance at every site (a dead unit)."""
    dead_a = torch.stack([s.var_a <= 0 for s in site_stats]).all(0)
    dead_b = torch.stack([s.var_b <= 0 for s in site_stats]).all(0)
    return bool(dead_a.any() or dead_b.any())
