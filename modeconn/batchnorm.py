"""BatchNorm statistics for weights they were not gathered for (points along a curve or a line)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from modeconn.data.batches import batches, call_model
from modeconn.errors import DataError
from modeconn.modules import device_of, float_dtype_of, modes_restored

__all__ = ["update_bn", "has_batchnorm"]


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` keeps BatchNorm running statistics (which a new point in weight space needs recomputed)."""
    return bool(_batchnorms(model))


@torch.no_grad()
def update_bn(
    model: nn.Module, data: Any, num_samples: int | None = None, *, adversary: Any = None
) -> nn.Module:
    """Recompute BatchNorm running statistics on ``data`` as an exact average over its batches
    (Garipov et al.'s ``update_bn``; momentum ``None``), in place; dropout stays off. ``data``
    is any form :func:`modeconn.data.batches` reads (labels are ignored, unless ``adversary``).

    With ``adversary`` (a :class:`modeconn.attacks.PGD`, called as ``adversary(model, x, y)``),
    the statistics are those of adversarial examples, as the paper's robust evaluation does:
    each labelled batch is attacked with the model in train mode (batch statistics, running
    statistics untouched), then counted. Models without BatchNorm are returned unchanged."""
    bns = _batchnorms(model)
    if not bns:
        return model
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over batches
    device, dtype = device_of(model), float_dtype_of(model)
    try:
        with modes_restored(model):
            model.train()
            for m in model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()
            for batch in batches(data, num_samples=num_samples):
                batch = batch.to(device, dtype)
                x = batch.x
                if adversary is not None:
                    if batch.target is None:
                        raise DataError("update_bn with an adversary needs labelled batches: (x, y)")
                    for m in bns:  # the attack's forward passes must not count
                        m.track_running_stats = False
                    try:
                        x = adversary(model, x, batch.target)
                    finally:
                        for m in bns:
                            m.track_running_stats = True
                call_model(model, x)
    finally:
        for m in bns:
            m.momentum = momenta[m]
    return model
