"""Built-in alignment costs: ``correlation``, ``l2_preact`` and ``weight_matching``.

Registered through the ``modeconn`` entry point like any third-party cost, using only the
public cost API in :mod:`modeconn.alignment.costs`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from modeconn import hookimpl
from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.costs import ActivationCost, WeightCost
from modeconn.alignment.stats import PairStats
from modeconn.symmetry.spec import PermutationSpec, TensorSlice


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
        return ea2[:, None] + eb2[None, :] - 2 * stats.cross


class WeightMatching(WeightCost):
    """Data-free weight matching (Ainsworth et al. 2023, "Git Re-Basin", §3.2): maximize
    Σ ⟨θ_A, Pθ_B⟩ over all tensors by coordinate descent, one linear assignment per group with
    the others held fixed, in a seeded random order, until no group changes."""

    def __init__(self, max_iter: int = 100, seed: int = 0):
        self.max_iter, self.seed = max_iter, seed

    def solve(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        groups = spec.permutable
        perms = {g.name: torch.arange(g.size) for g in groups}
        by_tensor: dict[str, list[tuple[str, TensorSlice]]] = {}
        for g in groups:
            for sl in g.slices:
                by_tensor.setdefault(sl.tensor, []).append((g.name, sl))
        sizes = {g.name: g.size for g in groups}
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.max_iter):
            changed = False
            for gi in torch.randperm(len(groups), generator=gen).tolist():
                g = groups[gi]
                m = torch.zeros(g.size, g.size, dtype=torch.float64)
                for sl in g.slices:
                    a, b = state_a[sl.tensor], state_b[sl.tensor]
                    if not a.is_floating_point():
                        continue
                    b = _permute_except(b, by_tensor[sl.tensor], perms, sizes, skip=g.name)
                    m += _units(a, sl, g.size) @ _units(b, sl, g.size).T
                new = solve_assignment(m, maximize=True)
                idx = torch.arange(g.size)
                if float(m[idx, new].sum()) > float(m[idx, perms[g.name]].sum()) + 1e-9 * float(m.abs().sum()):
                    perms[g.name] = new
                    changed = True
            if not changed:
                break
        return perms


def _units(t: torch.Tensor, sl: TensorSlice, size: int) -> torch.Tensor:
    """(units, everything else) for one slice, in float64."""
    block = t.narrow(sl.axis, sl.start, size * sl.inner)
    shape = list(block.shape)
    block = block.reshape(shape[: sl.axis] + [size, sl.inner] + shape[sl.axis + 1 :])
    return block.movedim(sl.axis, 0).reshape(size, -1).double()


def _permute_except(t, slices, perms, sizes, skip: str) -> torch.Tensor:
    """``t`` with every group's current permutation applied, except group ``skip``'s."""
    index: dict[int, torch.Tensor] = {}
    for name, sl in slices:
        if name == skip:
            continue
        idx = index.setdefault(sl.axis, torch.arange(t.shape[sl.axis]))
        n = sizes[name]
        idx[sl.start : sl.start + n * sl.inner] = (perms[name][:, None] * sl.inner + torch.arange(sl.inner)).reshape(-1) + sl.start
    for axis, idx in index.items():
        t = t.index_select(axis, idx.to(t.device))
    return t


@hookimpl
def modeconn_register_costs(registry) -> None:
    registry.add("correlation", Correlation())
    registry.add("l2_preact", L2PreActivation())
    registry.add("weight_matching", WeightMatching())
