"""Built-in alignment costs: ``correlation``, ``l2_preact`` and ``weight_matching``.

Registered like any third-party cost (by module name, before the entry points), using only the
public plugin API, :mod:`modeconn.plugin`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from modeconn.plugin import ActivationCost, PairStats, PermutationSpec, WeightCost, hookimpl, match_weights


class Correlation(ActivationCost):
    """Maximize the cross-correlation of post-activations (paper eq. 3, Li et al. 2016).

    A group observed at several sites (a residual stage, a concatenated space) averages its
    per-site correlation matrices: every site weighs the same, whatever its activation scale.
    """

    site_kind = "post"
    maximize = True

    def matrix(self, stats: PairStats) -> torch.Tensor:
        return stats.correlation()


class L2PreActivation(ActivationCost):
    """Minimize the expected squared distance of pre-activations, E|a_i - b_j|² (the paper's
    Wasserstein-2 alignment, §3.1 and Appendix C)."""

    site_kind = "pre"
    maximize = False

    def matrix(self, stats: PairStats) -> torch.Tensor:
        ea2 = stats.var_a + stats.mean_a**2
        eb2 = stats.var_b + stats.mean_b**2
        # E|a|² + E|b|² - 2 E[a b], built in one units x units tensor (large models have many)
        m = torch.outer(stats.mean_a, stats.mean_b).add_(stats.cov).mul_(-2.0)
        return m.add_(ea2[:, None]).add_(eb2[None, :])


class WeightMatching(WeightCost):
    """Data-free weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2): maximize
    Σ ⟨θ_A, Pθ_B⟩ over all tensors by coordinate descent, one linear assignment per group with
    the others held fixed, in a seeded random order, from a greedy start (layer by layer from
    the best determined; the signature start too where an exact match may have been missed),
    until a sweep gains less than ``tol`` of the objective's bound (``tol=0``: until no
    group changes; ``None``: :func:`match_weights`' default). ``starts``: which starts to
    descend from, keeping the best (``None``: :func:`match_weights`' default)."""

    def __init__(
        self,
        max_iter: int = 100,
        seed: int = 0,
        tol: float | None = None,
        starts: tuple[str, ...] | None = None,
    ):
        self.max_iter, self.seed, self.tol, self.starts = max_iter, seed, tol, starts

    def solve(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        tol = {} if self.tol is None else {"tol": self.tol}
        return match_weights(
            spec, state_a, state_b, seed=self.seed, max_iter=self.max_iter, starts=self.starts, **tol
        )


@hookimpl
def modeconn_register_costs(registry) -> None:
    registry.add("correlation", Correlation())
    registry.add("l2_preact", L2PreActivation())
    registry.add("weight_matching", WeightMatching())
