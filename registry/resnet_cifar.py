"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers, three stages of widths 16/32/64.

ResNet-32 has n = 5 BasicBlocks per stage (≈0.47M parameters with 10 classes). Where the shape
changes, the shortcut is a 1x1 convolution with BatchNorm (He et al.'s option B, as in the
paper's code); elsewhere it is the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from modeconn.registry._registry import register_model

from modeconn.errors import InvalidArgumentError

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``width`` is the first stage's width (16 in He et al.)."""

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise InvalidArgumentError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_planes = width
        for i, stride in enumerate((1, 2, 2)):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _create_resnet(depth: int, num_classes: int, in_chans: int, **kwargs) -> CifarResNet:
    return CifarResNet(depth=depth, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def resnet20(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return _create_resnet(20, num_classes, in_chans, **kwargs)


@register_model
def resnet32(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (paper Table 1: 0.47M parameters)."""
    return _create_resnet(32, num_classes, in_chans, **kwargs)
