"""Datasets: the embedded digits (offline default), CIFAR-10/100, Tiny ImageNet, the seeded
alignment subset, and a dataset whose random augmentation draws the same each time."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from modeconn.errors import InvalidArgumentError

from .digits import Digits
from .vision import NORMALIZATION, cifar10, cifar100, test_transform, tiny_imagenet, train_transform

__all__ = [
    "Digits",
    "DatasetInfo",
    "DATASETS",
    "cifar10",
    "cifar100",
    "tiny_imagenet",
    "digits",
    "load_dataset",
    "alignment_subset",
    "FixedDraws",
    "NORMALIZATION",
    "train_transform",
    "test_transform",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    in_chans: int
    image_size: int


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, 32),
    "cifar10": DatasetInfo(10, 3, 32),
    "cifar100": DatasetInfo(100, 3, 32),
    "tiny_imagenet": DatasetInfo(200, 3, 64),
}


def digits(train: bool = True, *, augment: bool | None = None, image_size: int = 32) -> Digits:
    """The embedded default dataset (real handwritten digits; works offline)."""
    return Digits(train, augment=augment, image_size=image_size)


def load_dataset(name: str, root: str | os.PathLike | None = None, train: bool = True, **kwargs) -> Dataset:
    """A dataset by name (see :data:`DATASETS`); ``root`` is required for all but ``"digits"``."""
    if name == "digits":
        return digits(train, **kwargs)
    loaders = {"cifar10": cifar10, "cifar100": cifar100, "tiny_imagenet": tiny_imagenet}
    if name not in loaders:
        raise InvalidArgumentError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise InvalidArgumentError(f"dataset {name!r} needs root=<folder>; only 'digits' is embedded")
    return loaders[name](root, train, **kwargs)


def alignment_subset(
    dataset: Dataset, fraction: float = 0.2, *, seed: int = 0, num_samples: int | None = None
) -> Subset:
    """A deterministic random subset for alignment: ``fraction`` of ``dataset`` (the paper uses
    20% of the training set), or exactly ``num_samples`` items; the same ``seed`` gives the same
    indices."""
    n = len(dataset)
    k = num_samples if num_samples is not None else round(fraction * n)
    if not 0 < k <= n:
        raise InvalidArgumentError(f"an alignment subset needs between 1 and {n} samples, got {k}")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=generator)[:k].sort().values
    return Subset(dataset, indices.tolist())


class FixedDraws(Dataset):
    """``dataset`` with its random transforms drawn the same for an item every time it is read:
    augmented like the data a model was trained on, yet the same inputs at every pass. What
    BatchNorm statistics are recomputed on at each point of a path, so that a point measures the
    same whichever path, order or number of points reaches it."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's RNG
            # mt19937 keeps 32 bits of a seed: mix the seed into them rather than above them
            torch.manual_seed((self.seed * 2_654_435_761 + int(index)) % 2**32)
            return self.dataset[index]
