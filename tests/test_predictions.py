"""What a model's output predicts: per sample, per token, and the next token for causal LMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modeconn
from modeconn.predictions import IGNORE_INDEX, logits_of, predictions, predicts_next_token
from modeconn.training import classification_loss


def test_per_sample_logits_are_scored_as_they_are():
    logits, y = torch.randn(5, 3), torch.randint(0, 3, (5,))
    flat, target = predictions(logits, y)
    assert flat is logits and target is y
    with pytest.raises(modeconn.DataError, match="next-token prediction needs logits"):
        predictions(logits, y, next_token=True)


def test_tokens_are_scored_one_by_one_and_the_next_one_for_a_causal_model():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    y[1, 2] = IGNORE_INDEX
    flat, target = predictions(logits, y)
    assert flat.shape == (7, 7) and torch.equal(target, torch.cat([y[0], y[1, :2], y[1, 3:]]))
    flat, target = predictions(logits, y, next_token=True)  # position t predicts token t + 1
    assert torch.equal(flat[0], logits[0, 0]) and target[0] == y[0, 1]
    assert flat.shape == (5, 7)  # 3 + 3 positions, less the one whose next token is ignored
    loss, main = classification_loss({"logits": logits}, y, next_token=True)
    assert main is logits
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten()))


def test_the_main_head_of_a_tuple_and_the_logits_of_a_mapping():
    a, b = torch.randn(3, 2), torch.randn(3, 2)
    assert logits_of((a, b)) is a and logits_of({"loss": None, "logits": b}) is b
    with pytest.raises(modeconn.DataError, match="expected logits"):
        logits_of({"hidden_states": a})


def test_only_hugging_face_causal_language_models_predict_the_next_token():
    T = pytest.importorskip("transformers")
    config = dict(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=8, bos_token_id=0, eos_token_id=0)
    assert predicts_next_token(T.GPT2LMHeadModel(T.GPT2Config(**config)))
    assert not predicts_next_token(T.GPT2ForSequenceClassification(T.GPT2Config(**config, pad_token_id=0)))
    assert not predicts_next_token(torch.nn.Linear(2, 2))
