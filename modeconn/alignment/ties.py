"""Telling apart units that activations cannot: dead ReLUs, units that fire on the same few inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.stats import PairStats
from modeconn.alignment.weight_matching import weight_similarity
from modeconn.symmetry.spec import Group, PermutationSpec

__all__ = ["TIE_SCALE", "break_ties", "has_constant_units"]

TIE_SCALE = 1e-5
"""Weight of the tie-breaking term: above float32 noise in the statistics, below any real difference."""


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
    to [-1, 1] and scaled by :data:`TIE_SCALE`, so that units with (nearly) equal activation
    costs are told apart by their weights. Two passes, since a group's weights are compared
    through its neighbours' permutations."""
    sign = 1.0 if maximize else -1.0
    for _ in range(2):
        for g in groups:
            w = weight_similarity(spec, g, state_a, state_b, perms)
            w = w / w.abs().max().clamp_min(1e-300)
            perms[g.name] = solve_assignment(matrices[g.name] + sign * TIE_SCALE * w, maximize=maximize)
    return perms


def has_constant_units(site_stats: Sequence[PairStats]) -> bool:
    """Whether some unit of model A or B has no variance at every site (a dead unit)."""
    dead_a = torch.stack([s.var_a <= 0 for s in site_stats]).all(0)
    dead_b = torch.stack([s.var_b <= 0 for s in site_stats]).all(0)
    return bool(dead_a.any() or dead_b.any())
