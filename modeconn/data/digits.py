"""The embedded default dataset: 1,797 real 8x8 handwritten digits, shipped inside modeconn.

Source: "Optical Recognition of Handwritten Digits" (E. Alpaydin and C. Kaynak, 1998), UCI
Machine Learning Repository, https://doi.org/10.24432/C50P49, licensed CC BY 4.0; the same
copy scikit-learn ships as ``load_digits``. ``digits.npz`` stores the images (values 0-16),
the labels, and a fixed stratified 80/20 train/test split (1,438 / 359 images).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from modeconn.errors import InvalidArgumentError

__all__ = ["Digits"]

NUM_CLASSES = 10


class Digits(Dataset):
    """The embedded digits as 1-channel ``image_size`` x ``image_size`` tensors.

    Images are upsampled bilinearly from 8x8 (32x32 by default, so every registry model takes
    them) and normalized to zero mean and unit variance over the training split — or, with
    ``normalize=False``, left in [0, 1] (for adversarial attacks; see :mod:`modeconn.attacks`). ``augment``
    adds small random rotations and shifts (never flips: a flipped digit is another symbol).
    """

    def __init__(
        self, train: bool = True, *, augment: bool | None = None, image_size: int = 32, normalize: bool = True
    ):
        if image_size < 8:
            raise InvalidArgumentError(
                f"image_size must be at least 8 (the digits are 8x8), got {image_size}"
            )
        with resources.files("modeconn.data").joinpath("digits.npz").open("rb") as f:
            data = np.load(f)
            images, labels, is_test = data["images"], data["labels"], data["is_test"]
        x = torch.from_numpy(images).float().unsqueeze(1) / 16.0
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        keep = torch.from_numpy(is_test != train)
        if normalize:
            train_x = x[torch.from_numpy(~is_test)]
            x = (x - train_x.mean()) / train_x.std()
        self.data = x[keep].contiguous()
        self.targets = torch.from_numpy(labels[keep.numpy()]).long()
        self.train = train
        self.transform = None
        if augment if augment is not None else train:
            pad = image_size // 8
            self.transform = v2.Compose(
                [v2.RandomAffine(degrees=10), v2.RandomCrop(image_size, padding=pad, padding_mode="edge")]
            )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.data[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])
