"""What one training step does, and the state it keeps: the base of every optimizer plugin.

A :class:`Trainer` owns the torch optimizer and learning-rate schedule of one module and knows
how to take one step on a batch. :func:`modeconn.train_model` uses it as is; the curve
optimizers that plugins register (:class:`CurveOptimizer`) specialize it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn import distributed
from modeconn.data.batches import call_model
from modeconn.errors import DataError, InvalidArgumentError
from modeconn.plugin_manager import PluginEntry, declare_kind
from modeconn.predictions import logits_of, predictions, predicts_next_token
from modeconn.training.settings import Settings

__all__ = [
    "Trainer",
    "CurveOptimizer",
    "OPTIMIZERS",
    "optimizer_options",
    "classification_loss",
    "AUX_WEIGHT",
]

AUX_WEIGHT = 0.3
"""Weight of each auxiliary head's cross-entropy (Szegedy et al. 2015, and the paper's GoogLeNet)."""


def classification_loss(
    output: Any, y: torch.Tensor, aux_weight: float = AUX_WEIGHT, *, next_token: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``output`` against ``y``, and the main logits.

    ``output`` is logits, a tuple of heads or a Hugging Face ``ModelOutput`` (its ``logits``);
    token-level logits are scored per token, predicting the next one when ``next_token`` (a
    causal language model; see :mod:`modeconn.predictions`). Models with auxiliary heads
    (GoogLeNet in train mode returns ``(logits, aux2, aux1)``) add ``aux_weight`` times each
    auxiliary head's cross-entropy (Szegedy et al. 2015 use 0.3).
    """
    logits = logits_of(output)
    loss = F.cross_entropy(*predictions(logits, y, next_token=next_token))
    if isinstance(output, (tuple, list)):
        if not all(isinstance(o, torch.Tensor) for o in output):
            raise DataError(f"the model returned a {type(output).__name__} that holds more than logits")
        for head in output[1:]:
            loss = loss + aux_weight * F.cross_entropy(*predictions(head, y, next_token=next_token))
    return loss, logits


LossFn = Callable[[Any, Any], torch.Tensor]
"""A user's loss: ``loss_fn(output, y)``, the model's raw output (a tensor, a tuple of heads or
a Hugging Face ``ModelOutput``) and the batch's target (see :mod:`modeconn.data.batches`),
to a scalar tensor."""


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class Trainer:
    """SGD with momentum and weight decay over ``module``'s trainable parameters, its learning
    rate scheduled per epoch, as :class:`~modeconn.training.settings.Settings` say (the paper's
    recipe by default); with ``adversary`` (e.g. :class:`modeconn.attacks.PGD`), on its
    adversarial examples. ``epochs`` is the length of the run the schedule spans. What a step
    minimizes is ``loss_fn(output, y)`` when ``loss_fn`` is given, else
    :func:`classification_loss` (see :meth:`criterion`).

    Subclasses change what a step does (:meth:`loss`, :meth:`training_step`), which parameters
    train (:meth:`parameters`), which torch optimizer is used (:meth:`configure_optimizer`),
    how many epochs the schedule spans (:meth:`schedule_epochs`), and what happens between
    epochs (:meth:`on_epoch_start`). Extra state a subclass must keep across an interruption
    goes into :meth:`state_dict`/:meth:`load_state_dict`.

    ``module`` is the module itself; ``wrapped`` is what the loss calls — the module, or its
    DistributedDataParallel wrapper under ``torchrun`` (set by the training loop) — and
    ``strategy`` the :mod:`modeconn.distributed` strategy of the run.
    """

    plugin: Any = None  # the PluginEntry of an optimizer plugin: its own methods' errors name it
    broadcast_buffers = True  # DDP: rank 0's buffers (BatchNorm statistics) at every forward

    def call_hook(self, name: str, *args: Any) -> Any:
        """Call method ``name``; if an optimizer plugin defines it, an error names the plugin."""
        fn = getattr(self, name)
        if self.plugin is not None and getattr(type(self), name) is not getattr(CurveOptimizer, name):
            return self.plugin.invoke(fn, *args)
        return fn(*args)

    def __init__(
        self,
        module: nn.Module,
        settings: Settings | None = None,
        *,
        epochs: int,
        aux_weight: float = AUX_WEIGHT,
        adversary: Any = None,
        loss_fn: LossFn | None = None,
    ):
        if adversary is not None and not callable(adversary):
            raise InvalidArgumentError(
                f"adversary must be callable as adversary(model, x, y), e.g. modeconn.attacks.PGD(); got {adversary!r}"
            )
        if loss_fn is not None and not callable(loss_fn):
            raise InvalidArgumentError(
                f"loss_fn must be callable as loss_fn(output, y) -> scalar tensor, or None for the default "
                f"cross-entropy; got {type(loss_fn).__name__} {loss_fn!r}"
            )
        self.settings = Settings() if settings is None else settings
        self.module = self.wrapped = module
        self.strategy = distributed.current()
        self.epochs = epochs
        self.aux_weight = aux_weight
        self.adversary = adversary
        self.loss_fn = loss_fn  # not in state_dict: a resumed run is given it again
        self.next_token = predicts_next_token(module)  # a causal LM's output at t predicts t + 1
        params = list(self.parameters())
        if not params:
            raise InvalidArgumentError(f"{type(module).__name__} has no trainable parameters")
        self.optimizer = self.configure_optimizer(params)
        schedule, horizon = self.settings.lr_schedule, self.schedule_epochs(epochs)
        # a closure, not the schedule object: LambdaLR would pickle an object's fields into checkpoints
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: float(schedule(epoch, horizon))
        )

    def apply_settings(self) -> None:
        """Make the optimizer follow ``self.settings`` from the current epoch on (a resumed run
        given other settings than its checkpoint's)."""
        s = self.settings
        schedule = getattr(self.scheduler, "schedule", self.scheduler)  # a plugin may wrap the LambdaLR
        schedule.base_lrs = [s.lr] * len(self.optimizer.param_groups)
        factor = float(schedule.lr_lambdas[0](schedule.last_epoch))
        for group in self.optimizer.param_groups:
            group.update(
                lr=s.lr * factor,
                initial_lr=s.lr,
                momentum=s.momentum,
                nesterov=s.nesterov,
                weight_decay=s.weight_decay,
            )

    def schedule_epochs(self, epochs: int) -> int:
        """How many epochs the learning-rate schedule spans: all of them by default."""
        return epochs

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to train: every parameter that requires a gradient."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def configure_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The torch optimizer over ``params``: SGD as ``self.settings`` say."""
        s = self.settings
        # the fused kernel updates in place: the unfused one makes a model-sized temporary for
        # the weight decay (grad + wd * param) at every step; the results agree up to rounding
        fused = bool(params) and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
        )
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay,
            fused=fused or None,
        )  # fmt: skip

    def on_fit_start(self, data: Any, epochs: int) -> None:
        """Called once before the first epoch to run (after a resume has restored
        :meth:`load_state_dict`), with the batches the loop will iterate — a re-iterable of
        :class:`~modeconn.data.batches.Batch` (``batch.x``, ``batch.target``,
        ``batch.to(device, dtype)``) — and the total number of epochs. No-op by default."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (1-based), after a resume too. No-op by default."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each epoch (1-based), after the schedule stepped and before the
        checkpoint is written, so what it changes is saved. No-op by default."""

    def summary(self) -> dict[str, Any]:
        """What the fit found beyond the trained weights (PAM: the permutation and its log);
        returned as ``history.summary``. Empty by default."""
        return {}

    def criterion(self, output: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of the model's ``output`` against the target ``y``, and the main logits
        (:func:`~modeconn.predictions.logits_of`): ``loss_fn(output, y)`` when the trainer was
        given one, else :func:`classification_loss` (auxiliary heads weighted by
        ``aux_weight``; next-token prediction for a causal language model). A ``loss_fn``
        result that is not a scalar tensor, or that has no gradient while gradients are on,
        raises :class:`~modeconn.InvalidArgumentError`."""
        if self.loss_fn is None:
            return classification_loss(output, y, self.aux_weight, next_token=self.next_token)
        loss = self.loss_fn(output, y)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(
                f"loss_fn {_name(self.loss_fn)} must return a scalar tensor (shape ()); it returned {got}. "
                f"Reduce it, e.g. with .mean()"
            )
        if torch.is_grad_enabled() and not loss.requires_grad:
            raise InvalidArgumentError(
                f"loss_fn {_name(self.loss_fn)} returned a tensor without a gradient: compute it from "
                f"the model's output with torch operations (not .item() or torch.tensor(...))"
            )
        return loss, logits_of(output)

    def loss(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss on one batch and the logits it came from (:meth:`criterion`).
        ``x`` is the model's input: a tensor, or a tuple / dict of several (see
        :func:`modeconn.data.call_model`). With an ``adversary``, the loss is on its examples
        against the module in train mode (adversarial training, Madry et al. 2018)."""
        if self.adversary is not None:
            x = self.adversary(self.module, x, y)
        return self.criterion(call_model(self.wrapped, x), y)

    def training_step(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimization step on a batch; returns the (detached) loss and logits."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self.call_hook("loss", x, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this trainer: optimizer and schedule state (tensors,
        numbers, strings, lists and dicts only: checkpoints load with ``weights_only=True``)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def optimizer_options(optimizer: str | type, given: Iterable[str] = ()) -> dict[str, Any]:
    """The options an optimizer plugin (by name, or its class) takes from ``fit_curve(...,
    **options)`` and ``--option``, with their defaults: the keyword parameters of its
    ``__init__`` and of each base class it passes ``**kwargs`` on to, less what ``fit_curve``
    passes itself. Raises :class:`~modeconn.InvalidArgumentError`, listing them, when ``given``
    names one it does not take."""
    entry = OPTIMIZERS.get(optimizer) if isinstance(optimizer, str) else None
    cls = entry.obj if entry is not None else optimizer
    out: dict[str, Any] = {}
    for klass in cls.__mro__ if isinstance(cls, type) else ():
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty):
                out.setdefault(p.name, None if p.default is p.empty else p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    else:
        if not isinstance(cls, type):  # a plugin that is not a class: its options are its own affair
            return out
    for internal in ("settings", "epochs", "curve", "module", "loss_fn"):
        out.pop(internal, None)
    unknown = sorted(set(given) - set(out))
    if unknown:
        name = entry.name if entry is not None else cls.__name__
        raise InvalidArgumentError(
            f"optimizer {name!r} takes no option(s) {', '.join(unknown)}; its options: "
            + (", ".join(f"{k}={v!r}" for k, v in out.items()) or "none")
        )
    return out


class CurveOptimizer(Trainer):
    """Fits a curve's bends: each step draws a fresh ``t ~ U[0, 1]`` and minimizes the loss of
    ``r(t)`` on the batch (paper Algorithm 2; Garipov et al. 2018). This is the ``"sgd"`` plugin.

    Plugins subclass it and register the class; ``fit_curve`` calls it as
    ``cls(curve, settings=settings, epochs=epochs, **options)``.
    The extension points: :meth:`on_fit_start`, :meth:`on_epoch_start` and :meth:`on_epoch_end`
    (PAM switches between learning the permutation of end point B and the bends there),
    :meth:`training_step` and :meth:`loss`, :meth:`perturb` (PGD replaces each batch's inputs
    by adversarial ones against ``r(t)``), :meth:`sample_t`, and :meth:`summary` (what the fit
    returns besides the curve).
    """

    # the curve's end points are buffers that never change: DDP need not send them every step
    broadcast_buffers = False

    def __init__(self, curve: nn.Module, settings: Settings | None = None, **kwargs: Any):
        super().__init__(curve, settings, **kwargs)
        # t has its own generator, seeded from rank 0's global one: seeded runs repeat, the
        # sequence of t survives a resume, and under torchrun every rank trains at the same t
        # (DDP averages the gradients of one t, not an estimator over several)
        self.generator = torch.Generator().manual_seed(self.strategy.shared_seed())

    @property
    def curve(self) -> nn.Module:
        return self.module

    def sample_t(self) -> float:
        """The point of the curve to train at for the next batch: uniform in [0, 1]."""
        return float(torch.rand((), generator=self.generator))

    def perturb(self, x: Any, y: torch.Tensor, t: float) -> Any:
        """The inputs to train on at ``t``: ``x`` itself here; adversarial training replaces it."""
        return x

    def loss(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.call_hook("sample_t")
        x = self.call_hook("perturb", x, y, t)
        return self.criterion(self.wrapped(x, t), y)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "t_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["t_generator"])


def _validate(entry: PluginEntry) -> None:
    if not (isinstance(entry.obj, type) and issubclass(entry.obj, CurveOptimizer)):
        raise entry.refuse("an optimizer is a subclass of CurveOptimizer (the class, not an instance)")


OPTIMIZERS = declare_kind("optimizer", "modeconn_register_optimizers", _validate)
"""The curve optimizers: subclasses of :class:`CurveOptimizer`."""
