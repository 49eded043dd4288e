"""modeconn: mode connectivity between neural networks, up to their permutation symmetry.

The public API is what this module exports (and, for plugin authors, :mod:`modeconn.plugin`);
everything else may change.
"""

from modeconn import attacks, distributed, errors
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
from modeconn.errors import *  # noqa: F403  (the whole hierarchy, listed in errors.__all__)
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
