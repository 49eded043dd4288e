"""VGG with BatchNorm for 32x32 inputs, as in Garipov et al. 2018's mode-connectivity code.

Thirteen 3x3 convolutions (VGG16) with BatchNorm and five max-pools reduce 32x32 to 1x1; the
classifier is ``Dropout -> Linear(512, 512) -> ReLU -> Dropout -> Linear(512, 512) -> ReLU ->
Linear(512, num_classes)`` (Garipov's choice; kuangliu's common variant has a single linear layer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from modeconn.registry._registry import register_model

from modeconn.errors import InvalidArgumentError

__all__ = ["CifarVGG"]

_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG-BN; ``width_factor`` scales every width (1.0 is the standard network)."""

    def __init__(self, depth: int = 16, num_classes: int = 10, in_chans: int = 3, width_factor: float = 1.0):
        super().__init__()
        if depth not in _CFG:
            raise InvalidArgumentError(f"VGG depth must be one of {sorted(_CFG)}, got {depth}")
        layers: list[nn.Module] = []
        c_in = in_chans
        for v in _CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c_out = max(1, round(v * width_factor))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        hidden = max(1, round(512 * width_factor))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c_in, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model
def vgg16(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarVGG:
    """VGG16 with BatchNorm for 32x32 inputs (15.3M parameters)."""
    return CifarVGG(16, num_classes=num_classes, in_chans=in_chans, **kwargs)
