"""modeconn: mode connectivity between neural networks, up to their permutation symmetry.

The public API is what this module exports (and, for plugin authors, :mod:`modeconn.plugin`);
everything else may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeconn import errors
from modeconn.errors import *  # noqa: F403  (the whole hierarchy, listed in errors.__all__)
from modeconn.lazy import lazy_exports

if TYPE_CHECKING:
    from modeconn import attacks, distributed
    from modeconn.alignment import (
        ActivationCost,
        AlignResult,
        CorrelationSignature,
        WeightCost,
        align,
        collect_statistics,
        cost_matrices,
        solve_groups,
    )
    from modeconn.batchnorm import update_bn
    from modeconn.curves import Curve, CurveFamily, evaluate_curve
    from modeconn.data.batches import call_model
    from modeconn.metrics import Classification, Metric, evaluate, measure
    from modeconn.paths import PathReport, interpolate
    from modeconn.plugin_manager import get_plugin, hookimpl, list_plugins, register_plugin, reset_plugins
    from modeconn.registry import create_model, is_model, list_models, register_model, unregister_model
    from modeconn.symmetry import (
        PermutationSpec,
        discover,
        permutation_matrix,
        permute,
        permute_state_dict,
        soft_permute_state_dict,
    )
    from modeconn.training import (
        Constant,
        Cosine,
        CurveOptimizer,
        Garipov,
        History,
        Settings,
        Step,
        fit_curve,
        load_checkpoint,
        save_checkpoint,
        train_model,
    )

# Where each public name lives. Importing modeconn imports none of them (nor torch): the first
# use of a name imports its module, so `modeconn --help` and `import modeconn.errors` stay fast.
_HOMES = {
    "attacks": "modeconn.attacks",
    "distributed": "modeconn.distributed",
    "ActivationCost": "modeconn.alignment",
    "AlignResult": "modeconn.alignment",
    "CorrelationSignature": "modeconn.alignment",
    "WeightCost": "modeconn.alignment",
    "align": "modeconn.alignment",
    "collect_statistics": "modeconn.alignment",
    "cost_matrices": "modeconn.alignment",
    "solve_groups": "modeconn.alignment",
    "update_bn": "modeconn.batchnorm",
    "Curve": "modeconn.curves",
    "CurveFamily": "modeconn.curves",
    "evaluate_curve": "modeconn.curves",
    "call_model": "modeconn.data.batches",
    "Classification": "modeconn.metrics",
    "Metric": "modeconn.metrics",
    "evaluate": "modeconn.metrics",
    "measure": "modeconn.metrics",
    "PathReport": "modeconn.paths",
    "interpolate": "modeconn.paths",
    "get_plugin": "modeconn.plugin_manager",
    "hookimpl": "modeconn.plugin_manager",
    "list_plugins": "modeconn.plugin_manager",
    "register_plugin": "modeconn.plugin_manager",
    "reset_plugins": "modeconn.plugin_manager",
    "create_model": "modeconn.registry",
    "is_model": "modeconn.registry",
    "list_models": "modeconn.registry",
    "register_model": "modeconn.registry",
    "unregister_model": "modeconn.registry",
    "PermutationSpec": "modeconn.symmetry",
    "discover": "modeconn.symmetry",
    "permutation_matrix": "modeconn.symmetry",
    "permute": "modeconn.symmetry",
    "permute_state_dict": "modeconn.symmetry",
    "soft_permute_state_dict": "modeconn.symmetry",
    "Constant": "modeconn.training",
    "Cosine": "modeconn.training",
    "CurveOptimizer": "modeconn.training",
    "Garipov": "modeconn.training",
    "History": "modeconn.training",
    "Settings": "modeconn.training",
    "Step": "modeconn.training",
    "fit_curve": "modeconn.training",
    "load_checkpoint": "modeconn.training",
    "save_checkpoint": "modeconn.training",
    "train_model": "modeconn.training",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)


__version__ = "0.2.0"

__all__ = [
    "__version__",
    "attacks",
    "distributed",
    # model registry
    "register_model",
    "unregister_model",
    "create_model",
    "list_models",
    "is_model",
    # symmetry
    "discover",
    "permute",
    "permute_state_dict",
    "soft_permute_state_dict",
    "permutation_matrix",
    "PermutationSpec",
    # alignment
    "align",
    "AlignResult",
    "CorrelationSignature",
    "collect_statistics",
    "cost_matrices",
    "solve_groups",
    # curves and training
    "Curve",
    "train_model",
    "fit_curve",
    "Settings",
    "Step",
    "Cosine",
    "Garipov",
    "Constant",
    "History",
    "evaluate_curve",
    "save_checkpoint",
    "load_checkpoint",
    # evaluation
    "evaluate",
    "measure",
    "Metric",
    "Classification",
    "update_bn",
    "interpolate",
    "PathReport",
    "call_model",
    # plugins: the kinds' base classes and the manager (everything else in modeconn.plugin)
    "hookimpl",
    "ActivationCost",
    "WeightCost",
    "CurveFamily",
    "CurveOptimizer",
    "get_plugin",
    "list_plugins",
    "register_plugin",
    "reset_plugins",
    # errors
    *errors.__all__,
]
