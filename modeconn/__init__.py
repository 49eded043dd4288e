"""modeconn: mode connectivity between neural networks, up to their permutation symmetry.

The public API is what this module exports (and, for plugin authors, :mod:`modeconn.plugin`);
everything else may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeconn import errors
from modeconn.errors import *  # noqa: F403  (the whole hierarchy, listed in errors.__all__)
from modeconn.lazy import lazy_exports, type_checking_imports

# The public API, listed once: these imports run only for type checkers; at run time each name
# is imported on first use (modeconn.lazy reads this block), so `modeconn --help` and
# `import modeconn.errors` import no torch.
if TYPE_CHECKING:
    from modeconn import attacks, plugin
    from modeconn.alignment import (
        ActivationCost,
        AlignResult,
        CorrelationSignature,
        PairStats,
        WeightCost,
        align,
        collect_statistics,
    )
    from modeconn.batchnorm import update_bn
    from modeconn.curves import Curve, CurveFamily, curve_ensemble, evaluate_curve
    from modeconn.merging import FilesResult, MergeResult, align_files, merge, merge_files, repair
    from modeconn.metrics import Classification, Metric, evaluate, measure
    from modeconn.path_report import PathReport, evaluate_line
    from modeconn.plugin import get_plugin, list_plugins, register_plugin
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
        History,
        HoldThenLinear,
        Settings,
        Step,
        fit_curve,
        load_checkpoint,
        save_checkpoint,
        train_model,
    )

# Names that were public and are not any more: they still work, with a DeprecationWarning.
_MOVED = {
    "hookimpl": "modeconn.plugin",
    "reset_plugins": "modeconn.plugin",
    "call_model": "modeconn.data.batches",
    "cost_matrices": "modeconn.alignment",
    "solve_groups": "modeconn.alignment",
    "Garipov": "modeconn.training.settings:HoldThenLinear",
    "interpolate": "modeconn.path_report:evaluate_line",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), moved=_MOVED)

__version__ = "0.2.0"

__all__ = ["__version__", *type_checking_imports(__file__, __name__), *errors.__all__]
