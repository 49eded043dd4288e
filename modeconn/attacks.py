"""Adversarial examples: projected gradient descent (PGD; Madry et al. 2018).

Convention (RobustBench's): inputs live in ``[0, 1]`` and any normalization happens inside the
model (:class:`modeconn.modules.Normalize`, ``create_model(..., normalize="cifar10")``, and the
datasets' ``normalize=False``), so that ε is the ε everyone quotes — 8/255 in pixel units, not in
units of a channel's standard deviation.

BatchNorm: an attack runs the model in whatever mode the caller left it. In eval mode the
attack sees the running statistics (the usual evaluation); in train mode every forward pass
normalizes by the attacked batch's statistics and — unless the caller prevents it — updates the
running statistics, as the paper's code does when it trains on PGD examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from modeconn.errors import InvalidArgumentError
from modeconn.metrics import Metric

__all__ = ["pgd", "PGD", "PRESETS", "RobustClassification"]

NORMS = ("linf", "l2")


def _main_logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def pgd(
    model: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    norm: str = "linf",
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``x`` against ``model``: ``steps`` steps of size ``alpha`` that
    ascend ``loss`` (default: cross-entropy of the main logits), each followed by projection
    onto the ``norm`` ball of radius ``eps`` around ``x`` and clamping to ``bounds``.

    ``norm="linf"`` takes sign steps from a uniform random start in the ε-box; ``"l2"`` takes
    steps along the normalized gradient from a random start uniform in radius. ``generator``
    seeds the random start (the same seed gives the same attack). Gradients are taken with
    respect to the input only: the model's parameters' ``.grad`` are left as they were. The
    model runs in the mode the caller set (see the module docstring). Returns a detached tensor.
    """
    if norm not in NORMS:
        raise InvalidArgumentError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if eps < 0 or alpha < 0 or steps < 0:
        raise InvalidArgumentError(f"eps, alpha and steps must be >= 0, got {eps}, {alpha}, {steps}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InvalidArgumentError(
            "pgd attacks one floating-point input tensor; for models with several inputs, attack "
            "the one that matters inside a wrapper that closes over the others"
        )
    lo, hi = bounds
    loss = loss or (lambda logits, target: F.cross_entropy(logits, target))
    x = x.detach()
    flat = (x.shape[0], *([1] * (x.ndim - 1)))

    def project(adv: torch.Tensor) -> torch.Tensor:
        delta = adv - x
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            length = delta.flatten(1).norm(dim=1).view(flat)
            delta = delta * torch.clamp(eps / length.clamp_min(1e-12), max=1.0)
        return (x + delta).clamp(lo, hi)

    adv = x.clone()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        if norm == "linf":
            adv = x + (2 * noise - 1) * eps
        else:
            direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            direction = direction / direction.flatten(1).norm(dim=1).view(flat).clamp_min(1e-12)
            radius = noise.flatten(1)[:, :1].view(flat)
            adv = x + direction * radius * eps
        adv = project(adv)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            value = loss(_main_logits(model(adv)), y)
            (grad,) = torch.autograd.grad(value, adv)
        with torch.no_grad():
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).view(flat).clamp_min(1e-12)
            adv = project(adv.detach() + alpha * step)
    return adv.detach()


@dataclass(frozen=True)
class PGD:
    """A PGD attack's settings, callable as ``attack(model, x, y, generator=None)``; what
    ``train_model(adversary=...)``, the ``pgd`` curve optimizer, ``RobustClassification`` and
    ``update_bn(adversary=...)`` take. See :func:`pgd` for the arguments; presets in
    :data:`PRESETS` (``PGD.preset("train")``)."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    norm: str = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InvalidArgumentError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")

    def __call__(
        self,
        model: Callable[[torch.Tensor], Any],
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return pgd(
            model,
            x,
            y,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            random_start=self.random_start,
            norm=self.norm,
            bounds=self.bounds,
            generator=generator,
        )

    @staticmethod
    def preset(name: str, **changes: Any) -> PGD:
        """A published setup by name (:data:`PRESETS`), with ``changes`` applied."""
        if name not in PRESETS:
            raise InvalidArgumentError(f"unknown PGD preset {name!r}; presets: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **changes)

    def describe(self) -> str:
        """A short label: ``"PGD-10 linf eps=8/255"``."""
        return f"PGD-{self.steps} {self.norm} eps={_in_255(self.eps)} alpha={_in_255(self.alpha)}"


def _in_255(v: float) -> str:
    k = v * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{v:g}"


PRESETS: dict[str, PGD] = {
    "train": PGD(eps=8 / 255, alpha=2 / 255, steps=5),  # the paper's code: 5 steps, α = ε/4
    "eval": PGD(eps=8 / 255, alpha=2 / 255, steps=10),  # the usual evaluation
}
"""``"train"``: the paper's robust training (L∞, ε = 8/255, 5 steps of α = ε/4 = 2/255, random
start). ``"eval"``: the usual robust evaluation (L∞, ε = 8/255, 10 steps of α = 2/255)."""


class RobustClassification(Metric):
    """Cross-entropy and accuracy (%) on ``attack``'s examples against the model in eval mode:
    ``"robust_loss"`` and ``"robust_accuracy"`` (a metric for :func:`modeconn.measure`,
    :func:`modeconn.evaluate_curve` and :func:`modeconn.evaluate_line`). ``seed`` fixes the
    attacks' random starts, batch by batch, so two models see the same starts."""

    keys = ("robust_loss", "robust_accuracy")

    def __init__(self, attack: PGD | None = None, *, seed: int = 0):
        self.attack = attack or PRESETS["eval"]
        self.seed = seed
        self._batch = 0

    def start(self) -> None:
        """Restart the sequence of random starts (called before each pass over the data)."""
        self._batch = 0

    def batch(self, model: Any, x: Any, y: torch.Tensor) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._batch)
        self._batch += 1
        adv = self.attack(model, x, y, generator=generator)
        with torch.no_grad():
            logits = _main_logits(model(adv))
        return {
            "robust_loss": float(F.cross_entropy(logits, y, reduction="sum")),
            "robust_accuracy": 100.0 * float((logits.argmax(1) == y).sum()),
        }
