"""The linear assignment problem (paper eq. 2), solved with scipy's Hungarian/JV solver."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from modeconn.errors import AlignmentError

__all__ = ["solve_assignment", "solve_assignments"]

_ADDITIVE = 0.9
"""The share of a matrix's variance in its row and column means above which they are
subtracted before the solve (measured on the matrices of docs/align.md's benchmark)."""


def solve_assignment(matrix: torch.Tensor, maximize: bool = False) -> torch.Tensor:
    """The permutation ``p`` optimizing ``sum_i matrix[i, p[i]]``.

    The solver is deterministic for a given matrix, so ties always resolve the same way.
    """
    m = matrix.detach().double().cpu().numpy()
    if not np.isfinite(m).all():
        raise AlignmentError("the assignment matrix has NaN or Inf entries")
    # Subtracting a constant from a row or a column changes every assignment's cost by that
    # constant, so the optimum is the same. Each row's and then each column's minimum: the
    # solver is 3-4x faster on the reduced matrix when rows and columns carry large offsets.
    # Where those offsets are most of the matrix (l2_preact's E|a|² + E|b|² terms), the minima
    # leave much of them in place: each row's and column's mean go first, which takes another
    # 1.5-2.8x off there (and costs up to 1.5x on weight matching's matrices, hence the test).
    # One working copy, changed in place: the solver's input is all the memory it takes.
    m = -m if maximize else m.copy()
    row = m.mean(1, keepdims=True)
    col = m.mean(0, keepdims=True) - row.mean()  # the column means of m - row, without it
    variance = np.einsum("ij,ij->", m, m) / m.size - m.mean() ** 2  # m.var(), without a temporary
    if row.var() + col.var() > _ADDITIVE * variance:
        m -= row
        m -= col
    m -= m.min(1, keepdims=True)
    m -= m.min(0, keepdims=True)
    rows, cols = linear_sum_assignment(m)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return perm


def solve_assignments(matrices: Sequence[torch.Tensor], maximize: bool = False) -> list[torch.Tensor]:
    """:func:`solve_assignment` of each matrix, several at a time on torch's intra-op threads
    (scipy's solver releases the GIL); the same permutations as one at a time."""
    workers = min(len(matrices), torch.get_num_threads())
    if workers <= 1:
        return [solve_assignment(m, maximize) for m in matrices]
    # the largest first, so that no thread is left with a big one at the end
    order = sorted(range(len(matrices)), key=lambda i: -matrices[i].numel())
    # the call's own pool, shut down (its threads joined) before it returns: no thread outlives
    # the call, in this process or in a fork of it
    with ThreadPoolExecutor(workers, thread_name_prefix="modeconn-assignment") as pool:
        solved = dict(zip(order, pool.map(lambda i: solve_assignment(matrices[i], maximize), order)))
    return [solved[i] for i in range(len(matrices))]
