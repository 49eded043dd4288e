"""The linear assignment and the weight similarity's kept products: the shortcuts that make
them fast give the answers of the plain computation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconn import discover
from modeconn.alignment.assignment import solve_assignment, solve_assignments
from modeconn.alignment.weight_matching import WeightSimilarity


def _brute(m: torch.Tensor, maximize: bool) -> torch.Tensor:
    n = m.shape[0]
    best = max if maximize else min
    perm = best(itertools.permutations(range(n)), key=lambda p: float(m[torch.arange(n), list(p)].sum()))
    return torch.tensor(perm)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    offsets=st.floats(0, 1e3),
    rank_one=st.floats(0, 1e2),
    maximize=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_assignment_is_optimal(n, offsets, rank_one, maximize, seed):
    """Row and column offsets (l2_preact's E|a|² + E|b|², which send the solve through the
    subtraction of the means) and a rank-one part (E[a] E[b]ᵀ) leave the optimum where brute
    force finds it."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, n, generator=gen, dtype=torch.float64)
    u, v = (
        torch.rand(n, generator=gen, dtype=torch.float64),
        torch.rand(n, generator=gen, dtype=torch.float64),
    )
    r, c = (
        torch.randn(n, generator=gen, dtype=torch.float64),
        torch.randn(n, generator=gen, dtype=torch.float64),
    )
    m = noise + rank_one * torch.outer(u, v) + offsets * (r[:, None] + c[None, :])
    perm = solve_assignment(m, maximize=maximize)
    want = _brute(m, maximize)
    rows = torch.arange(n)
    assert float(m[rows, perm].sum()) == pytest.approx(float(m[rows, want].sum()), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_solving_several_at_once_gives_each_ones_permutation(threads, monkeypatch):
    """Matrices solved on a pool of threads, largest first, come back in their own order, each
    with the permutation it gets alone."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    gen = torch.Generator().manual_seed(0)
    matrices = [torch.randn(n, n, generator=gen, dtype=torch.float64) for n in (3, 40, 1, 17, 40, 8)]
    for maximize in (False, True):
        alone = [solve_assignment(m, maximize) for m in matrices]
        together = solve_assignments(matrices, maximize)
        assert len(together) == len(alone)
        assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_kept_products_follow_the_neighbours():
    """One WeightSimilarity asked again after other groups moved (and after they moved back)
    gives what a fresh one gives."""

    def net():
        return nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 3),
        ).eval()  # fmt: skip

    torch.manual_seed(0)
    a = net()
    torch.manual_seed(1)
    b = net()
    spec = discover(a, torch.randn(2, 3, 6, 6))
    sa, sb = a.state_dict(), b.state_dict()
    kept = WeightSimilarity(spec, sa, sb)
    start = spec.identity()
    moved = spec.random_permutation(1)
    groups = [g for g in spec.permutable if g.kind != "heads"]
    assert len(groups) == 3
    back = {**moved, groups[1].name: start[groups[1].name]}
    for perms in (start, moved, back, start):
        for g in groups:
            fresh = WeightSimilarity(spec, sa, sb)(g, perms)
            assert torch.equal(kept(g, perms), fresh), g.name


@pytest.mark.parametrize("cost", ["correlation", "weight_matching"])
def test_no_solver_thread_outlives_the_call(cost, monkeypatch):
    """The threads that solve several assignments at once are joined before the call returns:
    none is left alive after ``solve_assignments`` or a whole ``align``."""
    import threading

    import modeconn
    from modeconn.alignment import assignment

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    ran_on = set()
    solve = assignment.solve_assignment

    def recorded(matrix, maximize=False):
        ran_on.add(threading.current_thread().name)
        return solve(matrix, maximize)

    monkeypatch.setattr(assignment, "solve_assignment", recorded)

    def mlp(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)).eval()

    before = set(threading.enumerate())
    gen = torch.Generator().manual_seed(0)
    solve_assignments([torch.randn(n, n, generator=gen) for n in (4, 6, 5)])
    assert set(threading.enumerate()) == before
    modeconn.align(mlp(0), mlp(1), torch.randn(64, 5, generator=gen), cost=cost, progress=False)
    assert set(threading.enumerate()) == before
    assert any(name.startswith("modeconn-assignment") for name in ran_on)  # the threads did run
