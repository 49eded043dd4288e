"""Telling apart units that activations cannot: dead ReLUs, units that fire on the same few inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.stats import PairStats
from modeconn.alignment.weight_matching import WeightSimilarity
from modeconn.symmetry.spec import Group, PermutationSpec

__all__ = ["TIE_SCALE", "break_ties", "has_constant_units", "has_tied_units"]

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
    with (nearly) equal activation costs are told apart by their weights. Only groups with tied
    units are solved again: two rows, or two columns, of the matrix within twice that term of
    each other in every entry (the term could swap them); the others keep their assignment.
    A group solved again is solved once more where a neighbour's assignment changed, since a
    group's weights are compared through its neighbours' permutations."""
    sign = 1.0 if maximize else -1.0
    similarity = WeightSimilarity(spec, state_a, state_b)
    scale = {g.name: TIE_SCALE * max(largest(matrices[g.name]), 1e-300) for g in groups}
    todo = [g for g in groups if has_tied_units(matrices[g.name], 2 * scale[g.name])]
    for _ in range(2):
        moved: set[str] = set()
        for g in todo:
            w = similarity(g, perms)  # a fresh matrix: changed in place, no units x units temporaries
            w.mul_(sign * scale[g.name] / max(largest(w), 1e-300)).add_(matrices[g.name])
            new = solve_assignment(w, maximize=maximize)
            del w
            if not torch.equal(new, perms[g.name]):
                perms[g.name] = new
                moved.add(g.name)
        todo = [g for g in todo if similarity.neighbours(g) & moved]
    return perms


def largest(m: torch.Tensor) -> float:
    """The largest absolute entry of ``m``, without an ``m.abs()`` temporary of its size."""
    low, high = torch.aminmax(m) if m.numel() else (m.new_zeros(()), m.new_zeros(()))
    return max(float(high), -float(low))


def has_tied_units(m: torch.Tensor, margin: float) -> bool:
    """Whether two rows, or two columns, of ``m`` differ by at most ``margin`` in every entry:
    units of A (rows) or of B (columns) that the matrix cannot tell apart, whose assignment a
    term bounded by ``margin / 2`` per entry may swap."""
    return _tied_rows(m, margin) or _tied_rows(m.T, margin)


def _tied_rows(m: torch.Tensor, margin: float) -> bool:
    m = m.detach().double().cpu()  # where the assignment is solved too (the statistics may be on CUDA)
    n, k = m.shape
    if n < 2:
        return False
    # Rows within `margin` everywhere stay within it along any direction g with |g|_1 = 1:
    # a few random directions find the candidates in O(n·k), which are then checked entry by
    # entry (the n x n x k comparison of every pair would cost as much as the assignment).
    g = torch.randn(k, _DIRECTIONS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g /= g.abs().sum(0)
    projected = m @ g
    window = margin + 1e-12 * largest(m)  # and the rounding of the products
    # Pairs within the window along the first direction: neighbours in sorted order.
    first, order = projected[:, 0].sort()
    ends = torch.searchsorted(first, first + window, right=True)
    counts = ends - torch.arange(1, n + 1)
    starts = torch.nonzero(counts > 0).flatten()
    if not len(starts):
        return False
    spans = counts[starts]
    i = starts.repeat_interleave(spans)
    j = i + 1 + torch.arange(int(spans.sum())) - (spans.cumsum(0) - spans).repeat_interleave(spans)
    i, j = order[i], order[j]
    keep = ((projected[i] - projected[j]).abs() <= window).all(1)
    i, j = i[keep], j[keep]
    for start in range(0, len(i), 1024):
        a, b = i[start : start + 1024], j[start : start + 1024]
        if bool(((m[a] - m[b]).abs().amax(1) <= margin).any()):
            return True
    return False


_DIRECTIONS = 16


def has_constant_units(site_stats: Sequence[PairStats]) -> bool:
    """Whether some unit of model A or B is constant at every site (a dead unit)."""
    constant = [s.constant() for s in site_stats]
    dead_a = torch.stack([a for a, _ in constant]).all(0)
    dead_b = torch.stack([b for _, b in constant]).all(0)
    return bool(dead_a.any() or dead_b.any())
