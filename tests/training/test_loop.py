"""The epoch loop's figures: correct predictions are counted exactly, and the sums over the
ranks under torchrun are not truncated."""

from __future__ import annotations

import pytest
import torch

from modeconn import distributed
from modeconn.training.loop import _batch_correct, _epoch_totals


def _logits_for(predicted: torch.Tensor, classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(predicted, classes).double()


def test_a_batch_counts_its_correct_predictions_exactly():
    target = torch.zeros(49, dtype=torch.long)
    predicted = torch.ones(49, dtype=torch.long)
    predicted[7] = 0  # one right of 49: 1/49 * 49 is 0.9999999999999999 in floats
    assert _batch_correct(_logits_for(predicted), target, 49) == 1.0
    predicted[:30] = 0
    assert _batch_correct(_logits_for(predicted), target, 49) == 30.0


def test_per_token_predictions_count_their_share_of_the_batch():
    target = torch.zeros(8, dtype=torch.long)  # 2 samples of 4 tokens each
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])  # 3 of 8 tokens right
    assert _batch_correct(_logits_for(predicted), target, 2) == pytest.approx(0.75)


class _TwoRanks(distributed.Local):
    """Rank 0 of two; the other rank's figures are ``other``."""

    world_size = 2

    def __init__(self, other: list[float]):
        self.other = other

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.add_(torch.tensor(self.other, dtype=tensor.dtype))


def test_the_epoch_figures_over_ranks_are_not_truncated():
    # each rank's count is a hair under 1 (a fraction times the batch size), their sum a hair
    # under 2: int() would read 1
    almost = 1 / 49 * 49
    assert almost + almost < 2
    loss_sum, correct, seen = _epoch_totals(_TwoRanks([2.0, almost, 49]), 1.5, almost, 49)
    assert loss_sum == 3.5
    assert correct == pytest.approx(2.0, abs=1e-12)
    assert seen == 98 and isinstance(seen, int)
    assert 100 * correct / seen == pytest.approx(100 * 2 / 98)


def test_one_process_keeps_its_own_figures():
    assert _epoch_totals(distributed.Local(), 1.25, 3.0, 7) == (1.25, 3.0, 7)
