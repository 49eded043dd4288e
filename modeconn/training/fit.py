"""``train_model`` trains end points; ``fit_curve`` fits the bends of a curve between them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import InvalidArgumentError
from modeconn.plugin_manager import direct_entry, get_plugin
from modeconn.training.loop import Callback, History, as_loader, resolve_device, run_epochs
from modeconn.training.trainer import CurveOptimizer, Trainer

__all__ = ["train_model", "fit_curve"]


def train_model(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_step: int = 20,
    lr_gamma: float = 0.5,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback | Callable] = (),
    progress: bool = True,
    adversary: Any = None,
) -> History:
    """Train ``model`` in place with the paper's recipe: SGD with momentum 0.9 and weight decay
    5e-4, the learning rate halved every 20 epochs, cross-entropy (plus 0.3 × each auxiliary
    head's, for GoogLeNet). With ``adversary`` (e.g. ``modeconn.attacks.PGD.preset("train")``)
    every batch is replaced by its adversarial examples against the model in train mode (Madry
    et al.'s adversarial training; BatchNorm normalizes by the attacked batch, and the attack's
    forward passes update the running statistics, as in the paper's code); the history's
    accuracy is then accuracy on those examples.

    ``train_data`` is a DataLoader, a Dataset or an ``(x, y)`` pair of tensors (the last two
    are shuffled in batches of ``batch_size``). With ``checkpoint`` (a ``.pt`` path) the state
    is saved atomically after every epoch, and a later call with the same path resumes after
    the last finished epoch, with the optimizer and learning-rate schedule as saved (the
    resumed call's ``lr`` and schedule arguments do not override them). ``device`` defaults to
    CUDA when available. Returns a :class:`~modeconn.training.loop.History`: one
    :class:`EpochRecord` per epoch (training loss and accuracy); the model ends in eval mode.
    """
    device = resolve_device(device)
    model.to(device)
    trainer = Trainer(
        model,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        adversary=adversary,
    )
    return run_epochs(
        trainer,
        as_loader(train_data, batch_size),
        epochs=epochs,
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        progress=progress,
        desc="train",
    )


def fit_curve(
    curve: nn.Module,
    train_data: Any,
    *,
    optimizer: str | type[CurveOptimizer] = "sgd",
    epochs: int,
    lr: float = 1e-2,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_step: int = 20,
    lr_gamma: float = 0.5,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback | Callable] = (),
    progress: bool = True,
    **options: Any,
) -> History:
    """Fit the bends of ``curve`` (a :class:`~modeconn.Curve`) in place: each batch trains at a
    fresh ``t ~ U[0, 1]`` (paper Algorithm 2; Garipov et al. 2018); the end points stay fixed.

    ``optimizer`` names an optimizer plugin — ``"sgd"``, or ``"pam"``, which learns a
    permutation of end point B together with the bends (paper eq. 5; see
    :class:`modeconn.plugins.pam.PAM` for its options) — or is a :class:`CurveOptimizer`
    subclass; ``options`` go to it. What the optimizer reports besides the curve (PAM: the
    permutation and its log) is the returned history's ``summary``.
    Data, device, checkpoints, resuming, callbacks and the return value are as in
    :func:`train_model`.
    """
    if not any(p.requires_grad for p in curve.parameters()):
        raise InvalidArgumentError(
            "the curve has no learnable bends (num_bends=0 or family 'linear'): there is nothing to fit"
        )
    if isinstance(optimizer, str):
        entry = get_plugin("optimizer", optimizer)
    else:
        entry = direct_entry("optimizer", optimizer, "fit_curve")
    device = resolve_device(device)
    curve.to(device)
    trainer = entry(
        curve,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        **options,
    )
    trainer.plugin = entry
    return run_epochs(
        trainer,
        as_loader(train_data, batch_size),
        epochs=epochs,
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        progress=progress,
        desc=f"fit curve ({optimizer})",
    )
