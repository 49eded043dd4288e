"""Everything a plugin author needs, in one place (modeconn's own plugins, in the top-level
``plugins/`` folder and installed as :mod:`modeconn.plugins`, import only from here).

* the hook marker :data:`hookimpl` and the registry a hook receives (:class:`PluginRegistry`);
* costs: :class:`ActivationCost`, :class:`WeightCost`, the :class:`PairStats` a cost reads,
  :func:`solve_assignment` and weight matching (:func:`match_weights`);
* curve families: :class:`CurveFamily` and the law a family must keep (:func:`check_family_law`);
* curve optimizers: :class:`CurveOptimizer` (subclass it), the :class:`Settings` it is built
  with, and :func:`classification_loss`;
  what an optimizer that learns permutations needs: :func:`permute_state_dict`,
  :func:`soft_permute_state_dict`, :func:`permutation_matrix`, and relaxed permutations
  (:func:`project_doubly_stochastic`, :func:`distance_from_doubly_stochastic`,
  :func:`nearest_permutation`, :func:`birkhoff_decomposition`);
* permutation rules: :class:`RuleContext`, :class:`TensorLayout`, :class:`Unsupported`, and
  the helpers built-in rules use (:func:`elementwise`, :func:`activation`, :func:`passthrough`,
  :func:`broadcast`, :func:`channel_axis`, :func:`metadata`, :func:`axis_index`);
* the plugin manager: :func:`register_plugin`, :func:`reset_plugins`, :func:`get_plugin`,
  :func:`get_registry`, :func:`list_plugins` (importing this module declares every kind of
  plugin: ``"cost"``, ``"curve"``, ``"optimizer"``, ``"rule"``); and :mod:`modeconn.testing` to check a plugin in your own CI.

The hooks themselves, with what each must do, are documented in :mod:`modeconn.hookspecs`.
"""

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.costs import ActivationCost, WeightCost
from modeconn.alignment.doubly_stochastic import (
    PROJECTIONS,
    birkhoff_decomposition,
    distance_from_doubly_stochastic,
    nearest_permutation,
    project_doubly_stochastic,
)
from modeconn.alignment.stats import PairStats
from modeconn.alignment.weight_matching import match_weights, signature_matching
from modeconn.curves.family import CurveFamily, check_family_law
from modeconn.plugin_manager import (
    PluginRegistry,
    get_plugin,
    get_registry,
    hookimpl,
    list_plugins,
    register_plugin,
    reset_plugins,
)
from modeconn.symmetry.context import RuleContext, Unsupported
from modeconn.symmetry.permutation import permutation_matrix, permute_state_dict, soft_permute_state_dict
from modeconn.symmetry.rules import builtin_rules
from modeconn.symmetry.rules.common import (
    activation,
    axis_index,
    broadcast,
    channel_axis,
    elementwise,
    metadata,
    passthrough,
)
from modeconn.symmetry.spaces import Layout, TensorLayout
from modeconn.symmetry.spec import Perms, PermutationSpec
from modeconn.training.settings import Settings
from modeconn.training.trainer import CurveOptimizer, classification_loss

__all__ = [
    "hookimpl",
    "PluginRegistry",
    "register_plugin",
    "reset_plugins",
    "get_plugin",
    "get_registry",
    "list_plugins",
    # costs
    "ActivationCost",
    "WeightCost",
    "PairStats",
    "PermutationSpec",
    "Perms",
    "solve_assignment",
    "match_weights",
    "signature_matching",
    # curve families
    "CurveFamily",
    "check_family_law",
    # curve optimizers
    "CurveOptimizer",
    "Settings",
    "classification_loss",
    "permute_state_dict",
    "soft_permute_state_dict",
    "permutation_matrix",
    "PROJECTIONS",
    "project_doubly_stochastic",
    "distance_from_doubly_stochastic",
    "nearest_permutation",
    "birkhoff_decomposition",
    # permutation rules
    "RuleContext",
    "TensorLayout",
    "Layout",
    "Unsupported",
    "builtin_rules",
    "elementwise",
    "activation",
    "passthrough",
    "broadcast",
    "channel_axis",
    "metadata",
    "axis_index",
]
