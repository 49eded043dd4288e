"""What users pass as data, turned into batches: one adapter for training, evaluation,
alignment and BatchNorm recomputation.

A *batch* as users have them is one of:

* a tensor: the model's single input (no labels);
* a dict: the model's inputs by parameter name, the Hugging Face convention; a ``"labels"``
  entry is the target, not an input;
* a tuple or list ``(inputs..., labels)``: the last element is the target when the caller
  says batches carry labels (training and evaluation always do; ``align`` by default), and
  ``((x1, x2), y)`` or ``({"input_ids": ...}, y)`` nest several inputs.

*Data* is a DataLoader or any re-iterable of such batches, a Dataset (batched here), an
``(x, y)`` pair of tensors, or a tensor of inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset, TensorDataset

from modeconn.errors import DataError

__all__ = ["Batch", "as_batch", "Batches", "batches", "call_model", "LABEL_KEYS"]

LABEL_KEYS = ("labels", "label")
"""Keys of a dict batch that hold the target rather than an input."""


@dataclass
class Batch:
    """One batch: the model's ``inputs`` (a tuple of positional inputs or a dict of them by
    name) and the ``target`` (``None`` when there are no labels)."""

    inputs: tuple | dict
    target: Any = None

    def call(self, model: Any) -> Any:
        """``model`` applied to the inputs."""
        return call_model(model, self.x)

    @property
    def x(self) -> Any:
        """The inputs as modeconn passes them around: the tensor itself for a model with one
        input, else the tuple (positional) or dict (by name); see :func:`call_model`."""
        if isinstance(self.inputs, tuple) and len(self.inputs) == 1:
            return self.inputs[0]
        return self.inputs

    @property
    def values(self) -> tuple:
        return tuple(self.inputs.values()) if isinstance(self.inputs, dict) else self.inputs

    def __len__(self) -> int:
        """The number of samples: the first axis of the first input tensor."""
        for v in self.values:
            if isinstance(v, torch.Tensor) and v.ndim:
                return v.shape[0]
        raise DataError("a batch without input tensors has no size")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Batch:
        """The batch on ``device``, its floating-point inputs cast to ``dtype`` (targets keep theirs)."""

        def move(v: Any, cast: bool) -> Any:
            if isinstance(v, torch.Tensor):
                return v.to(
                    device=device, dtype=dtype if cast and v.is_floating_point() and dtype else v.dtype
                )
            if isinstance(v, (tuple, list)):
                return type(v)(move(x, cast) for x in v)
            if isinstance(v, dict):
                return {k: move(x, cast) for k, x in v.items()}
            return v

        return Batch(move(self.inputs, True), move(self.target, False))

    def head(self, n: int) -> Batch:
        """The first ``n`` samples (every input tensor and the target cut alike)."""

        def cut(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.ndim:
                return v[:n]
            if isinstance(v, (tuple, list)):
                return type(v)(cut(x) for x in v)
            if isinstance(v, dict):
                return {k: cut(x) for k, x in v.items()}
            return v

        return Batch(cut(self.inputs), cut(self.target))


def call_model(model: Any, x: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple of inputs, ``model(**x)`` for a dict of them."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def as_batch(raw: Any, *, labels: bool = True) -> Batch:
    """One user batch as a :class:`Batch` (see the module docstring); ``labels`` says whether
    a tuple batch ends with its target."""
    if isinstance(raw, Batch):
        return raw
    if isinstance(raw, torch.Tensor):
        return Batch((raw,))
    if isinstance(raw, Mapping):
        target = next((raw[k] for k in LABEL_KEYS if k in raw), None)
        return Batch({k: v for k, v in raw.items() if k not in LABEL_KEYS}, target)
    if isinstance(raw, (tuple, list)) and raw:
        if labels and len(raw) >= 2:
            *inputs, target = raw
            if len(inputs) == 1 and isinstance(inputs[0], (tuple, list, Mapping)):  # ((x1, x2), y)
                nested = inputs[0]
                return Batch(dict(nested) if isinstance(nested, Mapping) else tuple(nested), target)
            return Batch(tuple(inputs), target)
        return Batch(tuple(raw))
    raise DataError(
        f"a batch must be a tensor, a dict of tensors, or a tuple (inputs..., labels); got {type(raw).__name__}"
    )


class Batches:
    """A re-iterable source of :class:`Batch` es (see :func:`batches`). ``sampler`` is the
    shuffling sampler when the batches were made here from a Dataset (its ``seed`` fixes the
    order of every epoch; :meth:`set_epoch` moves to the next)."""

    def __init__(self, source: Iterable, labels: bool, num_samples: int | None, sampler: Any = None):
        self.source, self.labels, self.num_samples, self.sampler = source, labels, num_samples, sampler

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch``: this one's sampler, or a user DataLoader's DistributedSampler."""
        sampler = self.sampler if self.sampler is not None else getattr(self.source, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for raw in self.source:
            batch = as_batch(raw, labels=self.labels)
            if self.num_samples is not None:
                if seen >= self.num_samples:
                    return
                batch = batch.head(self.num_samples - seen)
            seen += len(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


def batches(
    data: Any,
    *,
    batch_size: int = 256,
    shuffle: bool = False,
    labels: bool = True,
    num_samples: int | None = None,
    reiterable: bool = False,
    shard: bool = False,
    seed: int | None = None,
) -> Batches:
    """``data`` (see the module docstring) as batches. Datasets, tensors and tensor pairs are
    batched here: by ``batch_size`` in order, or with ``shuffle`` in a fresh order every epoch
    (:meth:`Batches.set_epoch`) drawn from ``seed`` (default: from torch's global generator).
    ``num_samples`` stops after that many samples; ``reiterable`` refuses one-shot iterators
    (a training loop reads the data every epoch).

    ``shard=True`` splits the work between the ranks of a ``torchrun`` job
    (:mod:`modeconn.distributed`) when the data is batched here: shuffled, each rank takes
    ``batch_size / N`` of every global batch (PyTorch's DistributedSampler), so that the N
    ranks together see the batches one process would; in order, rank r takes whole batches
    r, r + N, ... (``num_samples`` counts over all ranks; with fewer batches than ranks the
    batches are made smaller, one per rank). A DataLoader or other iterable is taken as this
    rank's share as it is."""
    from modeconn import distributed

    strategy = distributed.current() if shard else distributed.Local()
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    sampler = None
    if isinstance(data, IterableDataset):
        source: Iterable = DataLoader(data, batch_size=batch_size)
    elif isinstance(data, (torch.Tensor, Dataset)):
        if shuffle:
            source, sampler = _shuffled(data, batch_size, strategy, seed)
        else:
            if num_samples is not None:
                data = (
                    data[:num_samples]
                    if isinstance(data, torch.Tensor)
                    else Subset(data, range(min(num_samples, len(data))))
                )
                num_samples = None
            source = _in_order(data, batch_size, strategy)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        if reiterable and iter(data) is data:
            raise DataError(
                "the data is a one-shot iterator; pass a DataLoader, a Dataset or a list of batches so "
                "every epoch can read it"
            )
        source = data
    else:
        raise DataError(
            f"data must be a DataLoader, a Dataset, an iterable of batches, an (x, y) pair of tensors "
            f"or a tensor of inputs; got {type(data).__name__}"
        )
    return Batches(source, labels, num_samples, sampler)


def _shuffled(data: Any, batch_size: int, strategy: Any, seed: int | None) -> tuple[DataLoader, Any]:
    world = strategy.world_size
    if batch_size % world:
        raise DataError(
            f"batch_size {batch_size} is the global batch and must be divisible by the {world} ranks; "
            f"pass a multiple of {world}"
        )
    seed = strategy.shared_seed() if seed is None else seed
    sampler = DistributedSampler(
        data, num_replicas=world, rank=strategy.rank, shuffle=True, seed=seed % 2**62
    )
    return DataLoader(data, batch_size=batch_size // world, sampler=sampler), sampler


def _in_order(data: Any, batch_size: int, strategy: Any) -> Iterable:
    n = len(data)
    if -(-n // batch_size) < strategy.world_size <= n:  # fewer batches than ranks: smaller ones, one each
        batch_size = -(-n // strategy.world_size)
    starts = range(strategy.rank * batch_size, n, strategy.world_size * batch_size)
    if isinstance(data, torch.Tensor):
        return (
            [data[i : i + batch_size] for i in starts] if strategy.world_size > 1 else data.split(batch_size)
        )
    index = [list(range(i, min(i + batch_size, n))) for i in starts]
    return DataLoader(data, batch_sampler=index)
