"""Relaxed permutations: doubly stochastic matrices (the Birkhoff polytope, whose vertices are
the permutation matrices), projection onto them, and back to permutations.

PAM (paper eq. 5) optimizes a relaxed permutation per group by projected gradient steps; after
each step the matrix is projected back onto the doubly stochastic set, and at the end it is
rounded to a permutation — by the assignment of largest total weight, or by sampling the
permutations of its Birkhoff–von Neumann decomposition ``P = Σ_k q_k P_k``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from modeconn.errors import InvalidArgumentError

__all__ = [
    "PROJECTIONS",
    "project_doubly_stochastic",
    "distance_from_doubly_stochastic",
    "birkhoff_decomposition",
    "nearest_permutation",
]

PROJECTIONS = ("alternating", "exact", "sinkhorn")
"""``"alternating"``: the paper's code — a fixed number of rounds of clipping negative entries
and the exact projection onto the affine set of unit row and column sums (rows and columns sum
to 1 exactly; tiny negative entries may remain). ``"exact"``: the Euclidean projection onto
the Birkhoff polytope, by Dykstra's alternating projections until they stop moving.
``"sinkhorn"``: Sinkhorn–Knopp scaling of the clipped matrix (a projection in KL divergence:
every entry stays positive); it converges when the clipped matrix has a permutation inside its
positive entries, as it does after a small step from a doubly stochastic matrix."""


def _affine(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection onto {X : X1 = 1, 1ᵀX = 1ᵀ} (closed form)."""
    n = x.shape[-1]
    r = x.sum(-1, keepdim=True) - 1
    c = x.sum(-2, keepdim=True) - 1
    total = x.sum((-2, -1), keepdim=True) - n
    return x - r / n - c / n + total / n**2


def project_doubly_stochastic(
    matrix: torch.Tensor,
    method: str = "alternating",
    *,
    iters: int = 20,
    tol: float = 1e-9,
    max_iters: int = 10_000,
) -> torch.Tensor:
    """``matrix`` (n x n) projected onto the doubly stochastic matrices by ``method`` (see
    :data:`PROJECTIONS`). ``iters`` is the number of rounds of ``"alternating"``; the iterative
    methods stop when a round moves less than ``tol``, or after ``max_iters`` rounds."""
    x = matrix.detach()
    if method == "alternating":
        for _ in range(iters):
            x = _affine(x.clamp_min(0))
        return x
    if method == "exact":
        # Dykstra: alternate the two projections with correction terms, so that the limit is the
        # projection onto the intersection (plain alternation only finds some point in it)
        p = torch.zeros_like(x)
        q = torch.zeros_like(x)
        for _ in range(max_iters):
            y = _affine(x + p)
            p = x + p - y
            new = (y + q).clamp_min(0)
            q = y + q - new
            moved = float((new - x).abs().max())
            x = new
            if moved < tol:
                break
        return x
    if method == "sinkhorn":
        x = x.clamp_min(1e-12)
        for _ in range(max_iters):
            x = x / x.sum(-1, keepdim=True)
            x = x / x.sum(-2, keepdim=True)
            if float((x.sum(-1) - 1).abs().max()) < tol:
                break
        return x
    raise InvalidArgumentError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")


def distance_from_doubly_stochastic(matrix: torch.Tensor) -> float:
    """How far ``matrix`` is from doubly stochastic: the largest of its row-sum and column-sum
    errors and of its most negative entry's size (0 for a doubly stochastic matrix)."""
    x = matrix.detach()
    return max(
        float((x.sum(-1) - 1).abs().max()),
        float((x.sum(-2) - 1).abs().max()),
        float((-x).clamp_min(0).max()),
    )


def nearest_permutation(matrix: torch.Tensor) -> torch.Tensor:
    """The permutation of largest total weight in ``matrix`` (``perm[i]`` = the column of row
    ``i``), by linear assignment: the rounding of a relaxed permutation."""
    rows, cols = linear_sum_assignment(matrix.detach().double().cpu().numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return perm


def birkhoff_decomposition(
    matrix: torch.Tensor, *, max_terms: int | None = None, tol: float = 1e-6
) -> list[tuple[float, torch.Tensor]]:
    """Terms ``(q_k, perm_k)`` with ``matrix ≈ Σ_k q_k P(perm_k)``, largest weight first.

    Greedy: repeatedly take the assignment of largest total weight among the entries still
    positive (Birkhoff's theorem: a doubly stochastic matrix always has a permutation inside
    its support), with weight the smallest entry on it, and subtract it. Negative entries are
    clipped first; the terms' weights sum to at most 1, less when the matrix is not exactly
    doubly stochastic or ``max_terms`` stops early.
    """
    n = matrix.shape[-1]
    rest = matrix.detach().double().cpu().clamp_min(0).numpy().copy()
    big = float(n * n) + 1.0
    terms: list[tuple[float, torch.Tensor]] = []
    limit = max_terms if max_terms is not None else n * n
    idx = np.arange(n)
    while len(terms) < limit and rest.sum() > tol:
        cost = np.where(rest > tol, -rest, big)  # stay inside the support
        rows, cols = linear_sum_assignment(cost)
        weights = rest[rows, cols]
        if (weights <= tol).any():
            break  # what is left has no permutation inside its support (round-off)
        q = float(weights.min())
        perm = np.empty(n, dtype=np.int64)
        perm[rows] = cols
        terms.append((q, torch.from_numpy(perm)))
        rest[idx, perm] -= q
        rest[rest < tol] = 0.0
    terms.sort(key=lambda term: -term[0])
    return terms
