"""Training: end points (``train_model``), curves (``fit_curve``), their settings and
schedules (``Settings``), the optimizer-plugin API (``CurveOptimizer``), and checkpoints."""

from modeconn.training.checkpoint import load_checkpoint, save_checkpoint
from modeconn.training.fit import fit_curve, train_model
from modeconn.training.loop import Callback, EpochRecord, History, TrainState
from modeconn.training.settings import Constant, Cosine, Garipov, Settings, Step
from modeconn.training.trainer import AUX_WEIGHT, CurveOptimizer, Trainer, classification_loss

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
    "classification_loss",
    "AUX_WEIGHT",
    "Callback",
    "EpochRecord",
    "History",
    "TrainState",
    "save_checkpoint",
    "load_checkpoint",
]
