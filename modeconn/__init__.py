"""modeconn: mode connectivity between neural networks, up to their permutation symmetry.

The public API is what this module exports; everything else may change.
"""

from modeconn.alignment import AlignResult, align
from modeconn.curves import Curve, evaluate_curve
from modeconn.errors import (
    AlignmentError,
    CheckpointError,
    DatasetNotFoundError,
    ModeconnError,
    PluginError,
    PretrainedWeightsError,
    SymmetryError,
    TraceError,
    UnknownModelError,
    UnknownPluginError,
    UnsupportedOpError,
)
from modeconn.evaluation import CurveReport, evaluate, interpolate, update_bn
from modeconn.plugin_manager import get_plugin, hookimpl, list_plugins, register_plugin
from modeconn.registry import create_model, is_model, list_models, register_model
from modeconn.symmetry import PermutationSpec, discover, permute
from modeconn.training import fit_curve, load_checkpoint, save_checkpoint, train_model

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # model registry
    "register_model",
    "create_model",
    "list_models",
    "is_model",
    # symmetry
    "discover",
    "permute",
    "PermutationSpec",
    # alignment
    "align",
    "AlignResult",
    # curves and training
    "Curve",
    "train_model",
    "fit_curve",
    "evaluate_curve",
    "save_checkpoint",
    "load_checkpoint",
    # evaluation
    "evaluate",
    "update_bn",
    "interpolate",
    "CurveReport",
    # plugins
    "hookimpl",
    "get_plugin",
    "list_plugins",
    "register_plugin",
    # errors
    "ModeconnError",
    "UnknownModelError",
    "PretrainedWeightsError",
    "PluginError",
    "UnknownPluginError",
    "DatasetNotFoundError",
    "SymmetryError",
    "TraceError",
    "UnsupportedOpError",
    "AlignmentError",
    "CheckpointError",
]
