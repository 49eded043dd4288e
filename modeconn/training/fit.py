"""``train_model`` trains end points; ``fit_curve`` fits the bends of a curve between them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from modeconn import distributed
from modeconn.errors import InvalidArgumentError
from modeconn.training.loop import Callback, History, as_loader, run_epochs
from modeconn.training.settings import CURVES, END_POINTS, SETTING_NAMES, Settings
from modeconn.training.trainer import OPTIMIZERS, CurveOptimizer, LossFn, Trainer, optimizer_options

__all__ = ["train_model", "fit_curve"]


_FLAT_DOC = """The flat keyword arguments ``lr``, ``momentum``, ``nesterov``, ``weight_decay``,
    ``schedule``, ``batch_size``, ``lr_step`` and ``lr_gamma`` override ``settings`` field by
    field (see :class:`~modeconn.training.settings.Settings`)."""

_LOSS_DOC = """``loss_fn(output, y)`` replaces the default loss: it receives the model's raw output (a
    tensor, a tuple of heads or a Hugging Face ``ModelOutput``) and the batch's target (a
    tuple batch's last element, a dict batch's ``"labels"``, which the model is not given) and
    returns a scalar tensor to minimize; the history's accuracy still reads the output's main
    logits. A callable is not saved in the checkpoint: pass the same ``loss_fn`` again to
    resume."""


def train_model(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int,
    settings: Settings | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback | Callable] = (),
    progress: bool = True,
    adversary: Any = None,
    loss_fn: LossFn | None = None,
    **flat: Any,
) -> History:
    """Train ``model`` in place as ``settings`` say (default: the paper's recipe, SGD with
    momentum 0.9 and weight decay 5e-4, the learning rate halved every 20 epochs), on
    cross-entropy (plus 0.3 × each auxiliary head's, for GoogLeNet; next-token cross-entropy
    for a causal language model) or on ``loss_fn``. With ``adversary`` (e.g.
    ``modeconn.attacks.PGD.preset("train")``) every batch is replaced by its adversarial
    examples against the model in train mode (Madry et al.'s adversarial training; BatchNorm
    normalizes by the attacked batch, and the attack's forward passes update the running
    statistics, as in the paper's code); the history's accuracy is then accuracy on those
    examples.

    ``train_data`` is a DataLoader, a Dataset or an ``(x, y)`` pair of tensors (the last two
    are shuffled in batches of ``settings.batch_size``). With ``checkpoint`` (a ``.pt`` path)
    the state is saved atomically after every epoch, and a later call with the same path
    resumes after the last finished epoch, with the optimizer and learning-rate schedule as
    saved; settings that differ from the saved ones apply from the next epoch on, and a
    :class:`~modeconn.ResumeWarning` names them.
    ``device`` defaults to CUDA when available. Under ``torchrun`` the model trains with
    DistributedDataParallel on every rank (:mod:`modeconn.distributed`). Returns a
    :class:`~modeconn.training.loop.History`: one :class:`EpochRecord` per epoch (training loss
    and accuracy); the model ends in eval mode.

    {loss} An ``adversary`` still attacks by cross-entropy.

    {flat}
    """
    settings = Settings.of(settings, END_POINTS, **flat)
    device = distributed.current().device(device)
    model.to(device)
    trainer = Trainer(model, settings, epochs=epochs, adversary=adversary, loss_fn=loss_fn)
    return run_epochs(
        trainer,
        as_loader(train_data, settings.batch_size),
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
    settings: Settings | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback | Callable] = (),
    progress: bool = True,
    loss_fn: LossFn | None = None,
    **options: Any,
) -> History:
    """Fit the bends of ``curve`` (a :class:`~modeconn.Curve`) in place: each batch trains at a
    fresh ``t ~ U[0, 1]`` (paper Algorithm 2; Garipov et al. 2018); the end points stay fixed.
    ``settings`` default to :data:`~modeconn.training.settings.CURVES` (lr 0.01, else the
    paper's recipe).

    ``optimizer`` names an optimizer plugin — ``"sgd"``; ``"pam"``, which learns a permutation
    of end point B together with the bends (paper eq. 5; see :class:`modeconn.plugins.pam.PAM`
    for its options); ``"pgd"``, which trains on adversarial examples — or is a
    :class:`CurveOptimizer` subclass; the other ``options`` go to it. What the optimizer
    reports besides the curve (PAM: the permutation and its log) is the returned history's
    ``summary``. Data, device, checkpoints, resuming, ``torchrun``, callbacks and the return
    value are as in :func:`train_model`.

    {loss} The built-in optimizers, and any that keeps the base class's
    :meth:`~CurveOptimizer.criterion`, minimize it; PAM also scores its permutations by it,
    and ``"pgd"``'s attack still ascends cross-entropy.

    {flat}
    """
    if not any(p.requires_grad for p in curve.parameters()):
        raise InvalidArgumentError(
            "the curve has no learnable bends (num_bends=0 or family 'linear'): there is nothing to fit"
        )
    settings = Settings.of(settings, CURVES, **{k: options.pop(k) for k in SETTING_NAMES if k in options})
    entry = OPTIMIZERS.resolve(optimizer, "fit_curve")
    optimizer_options(optimizer if isinstance(optimizer, str) else entry.obj, options)
    if loss_fn is not None:  # an optimizer built for the default loss need not take the keyword
        options["loss_fn"] = loss_fn
    device = distributed.current().device(device)
    curve.to(device)
    trainer = entry(curve, settings=settings, epochs=epochs, **options)
    trainer.plugin = entry
    return run_epochs(
        trainer,
        as_loader(train_data, settings.batch_size),
        epochs=epochs,
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        progress=progress,
        desc=f"fit curve ({optimizer})",
    )


train_model.__doc__ = train_model.__doc__.format(flat=_FLAT_DOC, loss=_LOSS_DOC)
fit_curve.__doc__ = fit_curve.__doc__.format(flat=_FLAT_DOC, loss=_LOSS_DOC)
