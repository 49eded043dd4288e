"""What is measured of a model on data: the metric seam.

A :class:`Metric` turns one batch into sums (``{"loss": Σ loss, "accuracy": Σ correct}``)
that :func:`measure` adds up over the data and divides by the number of samples. Clean
classification loss and accuracy are built in; robust ones (PGD,
:class:`modeconn.attacks.RobustClassification`) measure on attacked inputs through the same seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn import distributed
from modeconn.data.batches import batches, call_model
from modeconn.errors import DataError
from modeconn.modules import device_of, float_dtype_of, modes_restored, unwrap
from modeconn.predictions import logits_of, predictions, predicts_next_token

__all__ = ["Metric", "Classification", "measure", "evaluate"]


class Metric:
    """One thing to measure. ``keys`` are the names of its results; :meth:`batch` returns
    their sums over one batch (``model`` is in eval mode; the metric may run it as it needs:
    an attack runs it many times)."""

    keys: tuple[str, ...] = ()

    def start(self) -> None:
        """Called before each pass over the data (a metric with a per-batch seed restarts it)."""

    def batch(self, model: nn.Module, x: Any, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class Classification(Metric):
    """Mean cross-entropy (``"loss"``) and accuracy in % (``"accuracy"``) on the inputs as they are."""

    keys = ("loss", "accuracy")

    def batch(self, model: nn.Module, x: Any, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            logits, target = predictions(
                logits_of(call_model(model, x)), y, next_token=predicts_next_token(model)
            )
        # per sample of the batch: a model scored per token gets its mean over the batch's tokens
        n = len(y)
        return {
            "loss": float(F.cross_entropy(logits, target)) * n,
            "accuracy": 100.0 * float((logits.argmax(1) == target).double().mean()) * n,
        }


def measure(model: nn.Module, data: Any, metrics: Sequence[Metric] = (Classification(),)) -> dict[str, float]:
    """Every metric's results over ``data`` (labelled batches in any form
    :func:`modeconn.data.batches` reads), averaged per sample, with ``model`` in eval mode
    (its modes are restored). Under ``torchrun`` each rank measures its share of the data and
    every rank gets the results over all of it."""
    model = unwrap(model)
    device, dtype = device_of(model), float_dtype_of(model)
    sums = {k: 0.0 for m in metrics for k in m.keys}
    total = 0
    with modes_restored(model):
        model.eval()
        for m in metrics:
            m.start()
        for batch in batches(data, shard=True):
            if batch.target is None:
                raise DataError(
                    "evaluation needs labelled batches: (inputs..., labels) or dicts with 'labels'"
                )
            batch = batch.to(device, dtype)
            for m in metrics:
                for k, v in m.batch(model, batch.x, batch.target).items():
                    sums[k] += v
            total += len(batch)
    strategy = distributed.current()
    if strategy.world_size > 1:  # sums and counts over every rank's share
        keys = list(sums)
        reduced = strategy.all_reduce(torch.tensor([*(sums[k] for k in keys), total], dtype=torch.float64))
        sums, total = dict(zip(keys, reduced[:-1].tolist())), int(reduced[-1])
    if total == 0:
        raise DataError("the evaluation data yielded no batch")
    return {k: v / total for k, v in sums.items()}


def evaluate(model: nn.Module, data: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) of ``model`` in eval mode over ``data``: a
    DataLoader or iterable of labelled batches (``(x, y)``, ``(x1, x2, y)``, dicts with a
    ``"labels"`` entry), a Dataset, or an ``(x, y)`` pair of tensors. The model's mode is restored."""
    result = measure(model, data)
    return result["loss"], result["accuracy"]
