"""evaluate/measure compute exactly the mean cross-entropy and accuracy, in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modeconn
from modeconn import Classification, Metric, evaluate, measure


def test_evaluate_is_the_mean_cross_entropy_and_accuracy():
    torch.manual_seed(0)
    model = modeconn.create_model("resnet20", width=4)
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,))
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss, acc = evaluate(model.train(), list(zip(x.split(16), y.split(16))))  # batches of 16, 16, 8
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert acc == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))
    assert model.training  # the mode is restored


class Confidence(Metric):
    keys = ("confidence",)

    def batch(self, model, x, y):
        with torch.no_grad():
            return {"confidence": float(model(x).softmax(1).max(1).values.sum())}


def test_metrics_plug_into_measure():
    model = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6,))
    x, y = torch.randn(10, 1, 4, 4), torch.zeros(10, dtype=torch.long)
    result = measure(model, (x, y), [Classification(), Confidence()])
    assert set(result) == {"loss", "accuracy", "confidence"}
    with torch.no_grad():
        assert result["confidence"] == pytest.approx(float(model.eval()(x).softmax(1).max(1).values.mean()))
    with pytest.raises(modeconn.DataError, match="needs labelled batches"):
        measure(model, x)
