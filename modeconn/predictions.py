"""What a model's output predicts, against what target: the logits of a classifier, the main head
of a tuple of heads, or the ``logits`` of a Hugging Face ``ModelOutput`` — one prediction per
sample, or one per token.

Token-level outputs ``(batch, tokens, classes)`` against targets ``(batch, tokens)`` are
flattened to one prediction per token; a causal language model's token t predicts target t + 1
(next-token prediction, as the model's own loss shifts its labels), and targets equal to
:data:`IGNORE_INDEX` (padding, by the Hugging Face convention) are left out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import DataError
from modeconn.modules import unwrap

__all__ = ["IGNORE_INDEX", "logits_of", "predictions", "predicts_next_token"]

IGNORE_INDEX = -100
"""A target that is not scored (Hugging Face's and ``F.cross_entropy``'s default)."""


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of a model's output: the tensor itself, the first of a tuple of heads,
    or a ``ModelOutput``'s (any mapping's) ``"logits"``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise DataError(
        f"the model returned {type(output).__name__}; expected logits, a tuple of logits (main head "
        f"first) or an output with 'logits' (a Hugging Face ModelOutput)"
    )


def predictions(
    logits: torch.Tensor, target: torch.Tensor, *, next_token: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, classes), target (N,))``: one row per prediction that is scored."""
    if logits.ndim > 2 and logits.ndim == target.ndim + 1:  # one prediction per token
        if next_token:
            logits, target = logits[:, :-1], target[:, 1:]
        logits, target = logits.flatten(0, -2), target.flatten()
        scored = target != IGNORE_INDEX
        return logits[scored], target[scored]
    if next_token:
        raise DataError(
            f"next-token prediction needs logits (batch, tokens, vocabulary) and targets (batch, "
            f"tokens); got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    return logits, target


def predicts_next_token(model: nn.Module) -> bool:
    """Whether ``model`` (or the base model of a curve) is a Hugging Face causal language
    model, whose output at token t predicts token t + 1."""
    model = unwrap(model)
    # a Curve evaluates its `base` architecture; asked by attribute so that predictions, which
    # the training loop imports, need not import curves
    if isinstance(getattr(model, "base", None), nn.Module):
        model = model.base
    if not type(model).__module__.startswith("transformers."):
        return False
    return type(model).__name__ in _causal_lm_classes()


@functools.cache
def _causal_lm_classes() -> frozenset[str]:
    """The class names of transformers' causal language models (read once: the metric asks per batch)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return frozenset(n for v in names for n in ([v] if isinstance(v, str) else v))
