"""Turn what users pass as data into a stream of input batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["iter_inputs"]


def iter_inputs(data: Any, num_samples: int | None = None, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Yield input tensors from a DataLoader, an iterable of ``(x, y)`` or ``x`` batches, or a
    tensor (split into batches of ``batch_size``), stopping after ``num_samples`` inputs."""
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    elif not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a DataLoader, an iterable of (x, y) or x batches, or a tensor; got {type(data).__name__}"
        )
    seen = 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, dict) or not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a batch of input tensors, got {type(x).__name__}")
        if num_samples is not None:
            if seen >= num_samples:
                return
            x = x[: num_samples - seen]
        seen += x.shape[0]
        yield x
