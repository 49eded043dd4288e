"""Tied units: rows (units of A) or columns (units of B) of a cost matrix that it cannot tell apart."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconn.alignment.ties import has_tied_units

MARGIN = 1e-3


def _brute(m: torch.Tensor, margin: float) -> bool:
    """Every pair of rows and every pair of columns, entry by entry."""

    def rows(t: torch.Tensor) -> bool:
        d = (t[:, None, :] - t[None, :, :]).abs().amax(-1)
        d.fill_diagonal_(torch.inf)
        return bool((d <= margin).any())

    return rows(m) or rows(m.T)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 30),
    k=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    columns=st.booleans(),
    offset=st.floats(0.0, 3.0),
)
def test_units_are_tied_exactly_when_two_are_within_the_margin_everywhere(n, k, seed, columns, offset):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, k, generator=g, dtype=torch.float64) * 10
    m = m.T.contiguous() if columns else m  # the planted pair is two columns
    t = m.T if columns else m
    if t.shape[0] >= 2:
        i, j = torch.randperm(t.shape[0], generator=g)[:2].tolist()
        # row j copies row i up to `offset` margins in one entry, less than one margin elsewhere
        t[j] = t[i] + 0.9 * MARGIN * (2 * torch.rand(t.shape[1], generator=g, dtype=torch.float64) - 1)
        t[j, 0] = t[i, 0] + offset * MARGIN
    assert has_tied_units(m, MARGIN) == _brute(m, MARGIN)


def test_a_copy_is_tied_and_a_unit_one_margin_away_is_not():
    m = torch.tensor([[0.0, 1.0, 2.0], [5.0, 3.0, 1.0], [9.0, 7.0, 4.0]], dtype=torch.float64)
    assert not has_tied_units(m, MARGIN)
    m[2] = m[1]
    assert has_tied_units(m, 0.0)  # dead units: equal statistics
    m[2, 1] += 2 * MARGIN
    assert not has_tied_units(m, MARGIN) and has_tied_units(m, 2 * MARGIN)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), k=st.integers(1, 30), seed=st.integers(0, 2**16), step=st.floats(0.5, 2.0))
def test_a_crowd_of_near_copies_is_checked_pair_by_pair(n, k, seed, step):
    """Rows that differ in one entry by `step` margins each: many candidate pairs along every
    direction, tied exactly when some two are within one margin."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(k, generator=g, dtype=torch.float64).repeat(n, 1)
    m[:, int(torch.randint(k, (1,), generator=g))] += step * MARGIN * torch.randperm(n, generator=g).double()
    assert has_tied_units(m, MARGIN) == _brute(m, MARGIN)
