import pytest
import torch

import modeconn


@pytest.fixture
def tiny_resnet():
    """``tiny_resnet(seed, **kwargs)``: a seeded ResNet-20 of width 4, fast enough to train in tests."""

    def make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return modeconn.create_model("resnet20", width=4, **kwargs)

    return make
