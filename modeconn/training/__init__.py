"""Training: end points (``train_model``), curves (``fit_curve``), their settings and
schedules (``Settings``), the optimizer-plugin API (``CurveOptimizer``), and checkpoints.

Names are imported on first use (:mod:`modeconn.lazy`): ``modeconn.training.settings`` stays
light enough for the command line's ``--help``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeconn.lazy import lazy_exports, type_checking_imports

if TYPE_CHECKING:  # the public names, listed once (modeconn.lazy reads this block)
    from modeconn.training.checkpoint import load_checkpoint, save_checkpoint
    from modeconn.training.fit import fit_curve, train_model
    from modeconn.training.loop import Callback, EpochRecord, History, TrainState
    from modeconn.training.settings import Constant, Cosine, HoldThenLinear, Settings, Step
    from modeconn.training.trainer import (
        AUX_WEIGHT,
        CurveOptimizer,
        Trainer,
        classification_loss,
        optimizer_options,
    )

__getattr__, __dir__ = lazy_exports(
    __name__, globals(), moved={"Garipov": "modeconn.training.settings:HoldThenLinear"}
)

__all__ = list(type_checking_imports(__file__, __name__))
