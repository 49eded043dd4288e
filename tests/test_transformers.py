"""Hugging Face models through the whole workflow, at tiny size and random init: train, evaluate,
align, fit and evaluate a curve, with dict batches whose ``labels`` are the target."""

from __future__ import annotations

import warnings

import pytest
import torch

import modeconn

T = pytest.importorskip("transformers")


def _gpt2(seed: int, **config_changes):
    torch.manual_seed(seed)
    config = T.GPT2Config(
        vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    config.update(config_changes)
    return T.GPT2LMHeadModel(config).eval()


def _text(n: int = 64, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    # a learnable language: each token is the previous one plus one, from random starts
    ids = (torch.randint(0, 30, (n, 1), generator=g) + torch.arange(12)) % 30
    return [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, n, 16)]


def test_the_next_token_loss_is_the_models_own():
    model, batch = _gpt2(0), _text()[0]
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    loss, _ = modeconn.evaluate(model, [batch])
    assert loss == pytest.approx(float(own), rel=1e-6)


def test_a_language_model_trains_aligns_and_a_curve_fits_between_two():
    data = _text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = _gpt2(0), _gpt2(1)
        before = modeconn.evaluate(a, data)[0]
        modeconn.train_model(a, data, epochs=8, lr=0.1, batch_size=16, progress=False)
        modeconn.train_model(b, data, epochs=8, lr=0.1, batch_size=16, progress=False)
    after = modeconn.evaluate(a, data)[0]
    assert after < before - 0.3, (before, after)  # it learns the successor rule
    inputs = {"input_ids": torch.cat([d["input_ids"] for d in data])}
    result = modeconn.align(a, b, [inputs])
    assert result.spec.capture == "export"
    curve = modeconn.Curve(a, result.model, "bezier", num_bends=1)
    history = modeconn.fit_curve(curve, data, epochs=2, lr=0.05, batch_size=16, progress=False)
    assert len(history) == 2
    report = modeconn.evaluate_curve(curve, data, num_points=3)
    ends = modeconn.evaluate(a, data)[0], modeconn.evaluate(result.model, data)[0]
    assert report.loss[0] == pytest.approx(ends[0], rel=1e-5)
    assert report.loss[-1] == pytest.approx(ends[1], rel=1e-5)


def test_loss_fn_receives_the_model_output_and_the_labels():
    data = _text(32)
    seen = []

    def half_next_token(output, labels):
        """Half the default next-token cross-entropy, from the ModelOutput's logits."""
        seen.append((output, labels))
        logits = output.logits[:, :-1].flatten(0, 1)
        return 0.5 * torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _gpt2(0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # train mode is eval mode
        default = modeconn.evaluate(model, data[:1])[0]
        history = modeconn.train_model(
            model, data[:1], epochs=1, lr=0.1, batch_size=16, loss_fn=half_next_token, progress=False
        )
    assert history[0].loss == pytest.approx(0.5 * default, rel=1e-5)  # one batch: before its step
    output, labels = seen[0]
    assert isinstance(output, T.utils.ModelOutput) and output.loss is None  # labels are not inputs
    assert torch.equal(labels, data[0]["labels"])

    seen.clear()
    curve = modeconn.Curve(_gpt2(1), _gpt2(2), "bezier", num_bends=1)
    history = modeconn.fit_curve(curve, data, epochs=1, lr=0.05, loss_fn=half_next_token, progress=False)
    assert len(seen) == len(data) and isinstance(seen[0][0], T.utils.ModelOutput)
    assert history[0].loss < 0.6 * default  # half a cross-entropy near log(30)
