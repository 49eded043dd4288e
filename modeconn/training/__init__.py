"""Training: end points (``train_model``), curves (``fit_curve``), their settings and
schedules (``Settings``), the optimizer-plugin API (``CurveOptimizer``), and checkpoints.

Names are imported on first use (:mod:`modeconn.lazy`): ``modeconn.training.settings`` stays
light enough for the command line's ``--help``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeconn.lazy import lazy_exports

if TYPE_CHECKING:
    from modeconn.training.checkpoint import load_checkpoint, save_checkpoint
    from modeconn.training.fit import fit_curve, train_model
    from modeconn.training.loop import Callback, EpochRecord, History, TrainState
    from modeconn.training.settings import Constant, Cosine, Garipov, Settings, Step
    from modeconn.training.trainer import (
        AUX_WEIGHT,
        CurveOptimizer,
        Trainer,
        classification_loss,
        optimizer_options,
    )

_HOMES = {
    **dict.fromkeys(("load_checkpoint", "save_checkpoint"), "modeconn.training.checkpoint"),
    **dict.fromkeys(("fit_curve", "train_model"), "modeconn.training.fit"),
    **dict.fromkeys(("Callback", "EpochRecord", "History", "TrainState"), "modeconn.training.loop"),
    **dict.fromkeys(("Constant", "Cosine", "Garipov", "Settings", "Step"), "modeconn.training.settings"),
    **dict.fromkeys(
        ("AUX_WEIGHT", "CurveOptimizer", "Trainer", "classification_loss", "optimizer_options"),
        "modeconn.training.trainer",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)

__all__ = [
    "train_model",
    "fit_curve",
    "Settings",
    "Step",
    "Cosine",
    "Garipov",
    "Constant",
    "Trainer",
    "CurveOptimizer",
    "optimizer_options",
    "classification_loss",
    "AUX_WEIGHT",
    "Callback",
    "EpochRecord",
    "History",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
]
