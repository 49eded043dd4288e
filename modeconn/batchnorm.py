"""BatchNorm statistics for weights they were not gathered for (points along a curve or a line)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from modeconn import distributed
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
    model: nn.Module,
    data: Any,
    num_samples: int | None = None,
    *,
    batch_size: int = 256,
    adversary: Any = None,
) -> nn.Module:
    """Recompute BatchNorm running statistics on ``data`` as an exact average over its batches
    (Garipov et al.'s ``update_bn``; momentum ``None``), in place; dropout stays off. ``data``
    is any form :func:`modeconn.data.batches` reads (labels are ignored, unless ``adversary``;
    Datasets and tensors are cut into batches of ``batch_size``).

    With ``adversary`` (a :class:`modeconn.attacks.PGD`, called as ``adversary(model, x, y)``),
    the statistics are those of adversarial examples, as the paper's robust evaluation does:
    each labelled batch is attacked with the model in train mode (batch statistics, running
    statistics untouched), then counted. Models without BatchNorm are returned unchanged.

    Under ``torchrun`` every rank calls it on its share of the data (a Dataset or tensor is
    split here by whole batches) and all get the statistics of all the batches."""
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
            for batch in batches(data, batch_size=batch_size, num_samples=num_samples, shard=True):
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
        _all_reduce(bns)
    finally:
        for m in bns:
            m.momentum = momenta[m]
    return model


def _all_reduce(bns: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Under torchrun, every rank's statistics become those of all ranks' batches together:
    with momentum ``None`` each running statistic is the mean over this rank's k batches, so
    k × statistic and k are sums, added over ranks in float64 and divided."""
    strategy = distributed.current()
    if strategy.world_size == 1:
        return
    parts = []
    for m in bns:
        k = m.num_batches_tracked.double()
        parts += [m.running_mean.double() * k, m.running_var.double() * k, k.reshape(1)]
    flat = strategy.all_reduce(torch.cat(parts))
    at = 0
    for m in bns:
        c = m.running_mean.numel()
        total = flat[at + 2 * c]
        if total == 0:
            raise DataError("update_bn saw no batch on any rank")
        m.running_mean.copy_(flat[at : at + c] / total)
        m.running_var.copy_(flat[at + c : at + 2 * c] / total)
        m.num_batches_tracked.fill_(int(total))
        at += 2 * c + 1
