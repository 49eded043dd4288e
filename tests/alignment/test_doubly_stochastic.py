"""Relaxed permutations: projections land on the doubly stochastic matrices (hypothesis over
random inputs), the exact one is the Euclidean projection, and rounding a permutation matrix or
decomposing one returns the permutation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeconn import InvalidArgumentError, permutation_matrix
from modeconn.alignment import (
    birkhoff_decomposition,
    distance_from_doubly_stochastic,
    nearest_permutation,
    project_doubly_stochastic,
)

TOL = 1e-6  # row / column sums and negative entries, in float64


def _matrix(seed: int, n: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.double)


def _random_ds(seed: int, n: int, terms: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(terms, generator=gen, dtype=torch.double)
    q /= q.sum()
    return sum(w * permutation_matrix(torch.randperm(n, generator=gen), torch.double) for w in q)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), scale=st.sampled_from([0.01, 1.0, 10.0]))
def test_exact_projection_returns_doubly_stochastic_matrices(seed, n, scale):
    x = project_doubly_stochastic(_matrix(seed, n, scale), "exact")
    assert distance_from_doubly_stochastic(x) < TOL


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), noise=st.sampled_from([1e-3, 1e-2, 5e-2]))
@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
def test_iterative_projections_after_a_gradient_step(method, seed, n, noise):
    """Sinkhorn scaling needs the clipped matrix to have a permutation inside its positive
    entries, and converges quickly only when no mass lies outside the limit's support. So the
    step here moves the positive entries alone, by little next to the smallest of them
    (hypothesis found steps that zeroed part of the support, or put mass of 1e-3 outside it:
    there Sinkhorn converges like 1/k and needs over 10⁴ rounds)."""
    ds = _random_ds(seed, n)
    support = ds > 0
    x = project_doubly_stochastic(ds + _matrix(seed + 1, n, noise) * ds[support].min() * support, method)
    assert distance_from_doubly_stochastic(x) < TOL


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), noise=st.sampled_from([1e-3, 1e-2, 5e-2]))
def test_the_papers_projection_after_a_gradient_step(seed, n, noise):
    """What PAM projects: a doubly stochastic matrix after a small step. The paper's 20 rounds
    make rows and columns sum to 1 exactly; the negative entries left are far below the step."""
    before = _random_ds(seed, n) + _matrix(seed + 1, n, noise)
    x = project_doubly_stochastic(before, "alternating", iters=20)
    assert float((x.sum(0) - 1).abs().max()) < 1e-9 and float((x.sum(1) - 1).abs().max()) < 1e-9
    assert float(x.min()) > -noise / 10


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 8))
def test_exact_projection_is_the_euclidean_one(seed, n):
    """The projection p of x onto a convex set obeys <x - p, y - p> <= 0 for every y in it."""
    x = _matrix(seed, n, 1.0)
    p = project_doubly_stochastic(x, "exact")
    for k in range(5):
        y = _random_ds(seed + 10 + k, n)
        assert float(((x - p) * (y - p)).sum()) < 1e-6


@pytest.mark.parametrize("method", ["alternating", "exact", "sinkhorn"])
def test_projection_keeps_a_doubly_stochastic_matrix(method):
    ds = _random_ds(0, 7)
    assert torch.allclose(project_doubly_stochastic(ds, method), ds, atol=1e-9)


def test_unknown_projection_names_the_choices():
    with pytest.raises(InvalidArgumentError, match="alternating, exact, sinkhorn"):
        project_doubly_stochastic(torch.eye(3), "dykstra")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 16))
def test_rounding_and_decomposing_a_permutation_return_it(seed, n):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    matrix = permutation_matrix(perm, torch.double)
    assert torch.equal(nearest_permutation(matrix), perm)
    terms = birkhoff_decomposition(matrix)
    assert len(terms) == 1 and terms[0][0] == pytest.approx(1.0) and torch.equal(terms[0][1], perm)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 10))
def test_birkhoff_decomposition_reconstructs_the_matrix(seed, n):
    ds = _random_ds(seed, n)
    terms = birkhoff_decomposition(ds)
    weights = [q for q, _ in terms]
    assert weights == sorted(weights, reverse=True)
    rebuilt = sum(q * permutation_matrix(p, torch.double) for q, p in terms)
    assert torch.allclose(rebuilt, ds, atol=1e-5)
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
