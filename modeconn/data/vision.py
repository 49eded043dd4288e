"""CIFAR-10, CIFAR-100 and Tiny ImageNet from a local folder, with the paper's transforms."""

from __future__ import annotations

import os
from pathlib import Path

import torchvision
from torch.utils.data import Dataset
from torchvision import transforms as T

from modeconn.errors import DatasetNotFoundError

__all__ = ["cifar10", "cifar100", "tiny_imagenet", "train_transform", "test_transform", "NORMALIZATION"]

# Channel statistics used by the paper's code.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


NORMALIZATION = {
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": (CIFAR_MEAN, CIFAR_STD),
    "tiny_imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""Per-channel (mean, std) by dataset name: what the datasets normalize by, and what
``create_model(..., normalize=name)`` puts inside a model that takes inputs in [0, 1]."""


def train_transform(image_size: int = 32, mean=CIFAR_MEAN, std=CIFAR_STD) -> T.Compose:
    """The paper's training augmentation: random rotation (±15°), horizontal flip, random crop
    with padding ``image_size // 8``, then normalization (none when ``mean`` is ``None``)."""
    steps = [
        T.RandomAffine(degrees=15),
        T.RandomHorizontalFlip(),
        T.RandomCrop(image_size, padding=image_size // 8),
        T.ToTensor(),
    ]
    return T.Compose(steps + ([T.Normalize(mean, std)] if mean is not None else []))


def test_transform(mean=CIFAR_MEAN, std=CIFAR_STD) -> T.Compose:
    """Plain test transform: to tensor and normalize (none when ``mean`` is ``None``)."""
    return T.Compose([T.ToTensor()] + ([T.Normalize(mean, std)] if mean is not None else []))


def _transform(train: bool, augment: bool | None, image_size: int, mean, std, normalize: bool = True):
    if not normalize:
        mean = std = None
    if augment if augment is not None else train:
        return train_transform(image_size, mean, std)
    return test_transform(mean, std)


def _cifar_class(base: type) -> type:
    class LocalCIFAR(base):
        """torchvision's dataset with an optional md5 check (``verify=False`` reads a local copy
        whose files differ from the originals, e.g. one rebuilt from JPEGs)."""

        def __init__(self, *args, verify: bool = True, **kwargs):
            self._verify = verify
            super().__init__(*args, **kwargs)

        def _check_integrity(self) -> bool:
            if self._verify:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    LocalCIFAR.__name__ = LocalCIFAR.__qualname__ = f"Local{base.__name__}"
    return LocalCIFAR


LocalCIFAR10 = _cifar_class(torchvision.datasets.CIFAR10)
LocalCIFAR100 = _cifar_class(torchvision.datasets.CIFAR100)


def _cifar(cls, label: str, root, train, augment, download, verify, normalize=True) -> Dataset:
    root = os.fspath(root)
    try:
        return cls(
            root,
            train=train,
            transform=_transform(train, augment, 32, CIFAR_MEAN, CIFAR_STD, normalize),
            download=download,
            verify=verify,
        )
    except RuntimeError as e:
        folder = Path(root) / cls.base_folder
        raise DatasetNotFoundError(
            f"{label} was not found (or failed its md5 check) in {folder}: put torchvision's "
            f"'{cls.base_folder}' folder under {root}; to read a copy whose checksums differ from "
            f"the originals (rebuilt or converted), pass --no-verify (verify=False in Python); in "
            f"Python, download=True fetches it."
        ) from e


def cifar10(
    root: str | os.PathLike,
    train: bool = True,
    *,
    augment: bool | None = None,
    download: bool = False,
    verify: bool = True,
    normalize: bool = True,
) -> Dataset:
    """CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py``); augmented when training
    unless ``augment=False``. Downloads only with ``download=True``. ``normalize=False`` keeps
    pixels in [0, 1] for a model that normalizes inside (adversarial robustness's convention:
    ``create_model(..., normalize="cifar10")``)."""
    return _cifar(LocalCIFAR10, "CIFAR-10", root, train, augment, download, verify, normalize)


def cifar100(
    root: str | os.PathLike,
    train: bool = True,
    *,
    augment: bool | None = None,
    download: bool = False,
    verify: bool = True,
    normalize: bool = True,
) -> Dataset:
    """CIFAR-100 from ``root`` (the folder holding ``cifar-100-python``); see :func:`cifar10`."""
    return _cifar(LocalCIFAR100, "CIFAR-100", root, train, augment, download, verify, normalize)


def tiny_imagenet(
    root: str | os.PathLike, train: bool = True, *, augment: bool | None = None, normalize: bool = True
) -> Dataset:
    """Tiny ImageNet (200 classes, 64x64) from ``root`` (``normalize``: see :func:`cifar10`).

    Expects ImageFolder layout: ``root/train/<class>/**.JPEG`` and ``root/val/<class>/**.JPEG``
    (reorganize the official ``val/images`` + ``val_annotations.txt`` into class folders first).
    There is no download: get ``tiny-imagenet-200.zip`` from the Stanford CS231n site.
    """
    split = Path(root) / ("train" if train else "val")
    if not split.is_dir() or not any(p.is_dir() for p in split.iterdir()):
        raise DatasetNotFoundError(
            f"Tiny ImageNet was not found at {split}: expected class folders there "
            f"(ImageFolder layout). Download tiny-imagenet-200.zip (CS231n), unzip it, and move the "
            f"validation images into val/<class>/ using val/val_annotations.txt."
        )
    return torchvision.datasets.ImageFolder(
        os.fspath(split), transform=_transform(train, augment, 64, IMAGENET_MEAN, IMAGENET_STD, normalize)
    )
