"""Training: end points (``train_model``), curves (``fit_curve``), the optimizer-plugin API
(``CurveOptimizer``), and checkpoints."""

from modeconn.training.checkpoint import load_checkpoint, save_checkpoint
from modeconn.training.fit import fit_curve, train_model
from modeconn.training.loop import Callback, EpochRecord, History, TrainState
from modeconn.training.trainer import AUX_WEIGHT, CurveOptimizer, Trainer, classification_loss

__all__ = [
    "train_model",
    "fit_curve",
    "Trainer",
    "CurveOptimizer",
    "classification_loss",
    "AUX_WEIGHT",
    "Callback",
    "EpochRecord",
    "History",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
]
