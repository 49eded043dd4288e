"""GoogLeNet for 32x32 inputs: torchvision's GoogLeNet (Szegedy et al. 2015) adapted as in the
paper's code.

Changes from torchvision: ``conv1`` is 7x7 with stride 1, the first max-pool and the max-pool
before inception 5a are removed, and the input is not re-normalized (``transform_input=False``).
Both auxiliary heads are kept: they count towards the paper's 10.24M parameters (100 classes;
9.96M with 10). In training mode the model returns ``GoogLeNetOutputs(logits, aux_logits2,
aux_logits1)``; modeconn's training loss is ``CE(logits) + 0.3 * (CE(aux1) + CE(aux2))``
(:data:`modeconn.training.AUX_WEIGHT`, Szegedy et al.'s weight).
In eval mode it returns the main logits only.
"""

from __future__ import annotations

import torch.nn as nn
from modeconn.registry._registry import register_model
from torchvision.models.googlenet import BasicConv2d, GoogLeNet

__all__ = ["CifarGoogLeNet"]


class CifarGoogLeNet(GoogLeNet):
    """torchvision's GoogLeNet with the 32x32 adaptations described in the module docstring."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, aux_logits: bool = True, dropout: float = 0.2
    ):
        super().__init__(
            num_classes=num_classes,
            aux_logits=aux_logits,
            transform_input=False,
            init_weights=True,
            dropout=dropout,
        )
        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=1, padding=3)
        self.maxpool1 = nn.Identity()
        self.maxpool4 = nn.Identity()
        nn.init.trunc_normal_(self.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)


@register_model
def googlenet(num_classes: int = 10, in_chans: int = 3, **kwargs) -> CifarGoogLeNet:
    """GoogLeNet for 32x32 inputs with both auxiliary heads (paper Table 1: 10.24M with 100 classes)."""
    return CifarGoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
