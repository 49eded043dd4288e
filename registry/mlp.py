"""A small fully connected network: the easiest case for alignment and curves."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from modeconn.registry._registry import register_model

__all__ = ["MLP"]


class MLP(nn.Module):
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear`` for ``in_chans x img_size x img_size`` inputs."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, hidden: Sequence[int] = (512, 256)
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * img_size * img_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model
def mlp(num_classes: int = 10, in_chans: int = 3, **kwargs) -> MLP:
    """Two hidden layers (512, 256) for 32x32 inputs; ``img_size`` and ``hidden`` are configurable."""
    return MLP(num_classes=num_classes, in_chans=in_chans, **kwargs)
