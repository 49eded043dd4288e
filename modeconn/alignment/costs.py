"""The cost plugin API: what a cost registered under ``modeconn_register_costs`` implements.

Two shapes of cost exist:

* :class:`ActivationCost` — from activation statistics. Implement :meth:`~ActivationCost.matrix`
  for one observation site; :func:`modeconn.align` streams the data once through both models,
  accumulates :class:`~modeconn.alignment.stats.PairStats` at every site of every group, averages
  your matrices over a group's sites and solves the assignment.
* :class:`WeightCost` — data-free, from the weights alone. Implement
  :meth:`~WeightCost.solve` and return the permutations directly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from modeconn.alignment.stats import PairStats
from modeconn.plugin_manager import PluginEntry, declare_kind
from modeconn.symmetry.spec import PermutationSpec

__all__ = ["ActivationCost", "WeightCost", "COSTS"]


class ActivationCost:
    """Base class of costs computed from the activations of matched units.

    Attributes:
        site_kind: the sites to observe, ``"post"`` (after a nonlinearity) or ``"pre"``;
            a group with no site of that kind is observed at its other sites.
        maximize: whether :meth:`matrix` is a similarity to maximize (else a cost to minimize).
    """

    requires_data = True
    site_kind = "post"
    maximize = False

    def matrix(self, stats: PairStats) -> torch.Tensor:
        """A (units of A) x (units of B) matrix for one site; entry (i, j) scores matching
        unit i of model A with unit j of model B."""
        raise NotImplementedError


class WeightCost:
    """Base class of data-free costs that find permutations from the weights alone."""

    requires_data = False

    def solve(
        self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Permutations of model B's groups, ``perms[g][i]`` = the unit of B that moves to
        position ``i``, for the permutable groups of ``spec``."""
        raise NotImplementedError


def _validate(entry: PluginEntry) -> None:
    if not isinstance(entry.obj, (ActivationCost, WeightCost)):
        raise entry.refuse("a cost is an instance of ActivationCost or WeightCost (modeconn.plugin)")


COSTS = declare_kind("cost", "modeconn_register_costs", _validate)
"""The alignment costs: instances of :class:`ActivationCost` or :class:`WeightCost`."""
