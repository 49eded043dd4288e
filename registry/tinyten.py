"""TinyTen (Kornblith et al. 2019): a narrow 10-layer CNN for 32x32 inputs.

Eight ``Conv(bias) -> BatchNorm -> ReLU`` blocks, global average pooling and a linear layer,
as in the paper's public code (≈86.8k parameters with 10 classes; 0.09M in the paper's Table 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from modeconn.registry._registry import register_model

from modeconn.errors import InvalidArgumentError

__all__ = ["TinyTen"]

# (kernel, stride, padding) of the eight conv layers; widths are configurable.
_LAYOUT = [(3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 0), (1, 1, 0)]
_WIDTHS = (16, 16, 32, 32, 32, 64, 64, 64)


class TinyTen(nn.Module):
    """TinyTen. ``widths`` (eight channel counts) exists so tests can build tiny variants."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = _WIDTHS):
        super().__init__()
        if len(widths) != len(_LAYOUT):
            raise InvalidArgumentError(
                f"TinyTen needs {len(_LAYOUT)} widths, got {len(widths)}: {tuple(widths)}"
            )
        layers: list[nn.Module] = []
        c_in = in_chans
        for c_out, (k, s, p) in zip(widths, _LAYOUT):
            layers += [
                nn.Conv2d(c_in, c_out, k, stride=s, padding=p),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def tinyten(num_classes: int = 10, in_chans: int = 3, **kwargs) -> TinyTen:
    """TinyTen for 32x32 inputs (paper Table 1: 0.09M parameters)."""
    return TinyTen(num_classes=num_classes, in_chans=in_chans, **kwargs)
