"""Settings and schedules: one object for every fit, schedules as the papers define them, the
flat keywords as a convenience, and a resumed run that names the settings it did not apply."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import modeconn
from modeconn import Constant, Cosine, HoldThenLinear, Settings, Step
from modeconn.errors import InvalidArgumentError, ResumeWarning


def _task(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(64, 4)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), (x, (x[:, 0] > 0).long())


def test_garipov_schedule_is_flat_then_linear_then_flat():
    g = HoldThenLinear()
    assert [g(e, 10) for e in (0, 5)] == [1.0, 1.0]
    assert g(7, 10) == pytest.approx(1 - 0.5 * 0.99)  # halfway down the ramp from 50% to 90%
    assert g(9, 10) == pytest.approx(0.01) and g(10, 10) == pytest.approx(0.01)


@given(epochs=st.integers(1, 400), epoch=st.integers(0, 400))
def test_schedules_start_at_one_and_stay_within_their_range(epochs, epoch):
    epoch = min(epoch, epochs)
    for schedule in (HoldThenLinear(), Cosine(), Step(7, 0.5), Constant()):
        assert schedule(0, epochs) == 1.0
        assert 0.0 <= schedule(epoch, epochs) <= 1.0
    assert Cosine()(epochs, epochs) == pytest.approx(0.0, abs=1e-12)
    # Garipov's and the cosine schedule never rise
    for schedule in (HoldThenLinear(), Cosine()):
        assert schedule(epoch, epochs) <= schedule(max(epoch - 1, 0), epochs) + 1e-12


@pytest.mark.parametrize(
    "schedule, factors",
    [
        ("step", [1.0, 1.0, 0.5, 0.5]),  # lr_step=2
        ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
        (HoldThenLinear(), [1.0, 1.0, 1.0, 1 - 0.25 / 0.4 * 0.99]),
        (lambda epoch, epochs: 1.0 / (epoch + 1), [1.0, 0.5, 1 / 3, 0.25]),
    ],
)
def test_train_model_runs_each_epoch_at_the_scheduled_rate(schedule, factors):
    model, data = _task()
    settings = Settings(lr=0.2, schedule=schedule, lr_step=2, batch_size=16)
    history = modeconn.train_model(model, data, epochs=4, settings=settings, progress=False)
    assert [r.lr for r in history] == pytest.approx([0.2 * f for f in factors])


def test_flat_keywords_override_the_settings_object():
    base = Settings(lr=0.05, momentum=0.5, batch_size=16)
    assert Settings.of(base, Settings(), lr=0.2, weight_decay=None) == Settings(
        lr=0.2, momentum=0.5, batch_size=16
    )
    assert Settings.of({"lr": 0.3}, Settings(lr=0.01)).lr == 0.3
    assert Settings.of(None, Settings(lr=0.01)).lr == 0.01
    model, data = _task()
    history = modeconn.train_model(model, data, epochs=1, settings=base, lr=0.2, progress=False)
    assert history[0].lr == 0.2


def test_fit_curve_gives_the_optimizer_its_settings():
    a, data = _task(0)
    b, _ = _task(1)
    seen = {}

    class Probe(modeconn.CurveOptimizer):
        def __init__(self, curve, **kwargs):
            super().__init__(curve, **kwargs)
            seen["settings"], seen["epochs"] = self.settings, self.epochs

    modeconn.fit_curve(
        modeconn.Curve(a, b), data, optimizer=Probe, epochs=2, settings=Settings(lr=0.03, nesterov=True),
        batch_size=32, progress=False,
    )  # fmt: skip
    assert seen == {"settings": Settings(lr=0.03, nesterov=True, batch_size=32), "epochs": 2}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": 0}, "lr must be positive"),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        ({"nesterov": True, "momentum": 0}, "nesterov needs momentum"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr_step": 0}, "Step needs every >= 1"),
    ],
)
def test_bad_settings_say_what_is_wrong(bad, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Settings(**bad)


def test_an_unknown_flat_keyword_lists_the_settings():
    model, data = _task()
    with pytest.raises(
        InvalidArgumentError, match="unknown setting.*learning_rate.*the settings are lr, momentum"
    ):
        modeconn.train_model(model, data, epochs=1, learning_rate=0.1, progress=False)


def test_a_resume_with_other_settings_says_which_it_keeps(tmp_path):
    model, data = _task()
    ckpt = tmp_path / "run.pt"
    modeconn.train_model(model, data, epochs=1, lr=0.1, checkpoint=ckpt, progress=False)
    with pytest.warns(
        ResumeWarning,
        match=r"applied from epoch 2: lr 0\.1 -> 0\.05; momentum 0\.9 -> 0\.5; schedule 'step' -> 'cosine'",
    ):
        history = modeconn.train_model(
            model, data, epochs=3, lr=0.05, schedule="cosine", momentum=0.5, checkpoint=ckpt, progress=False
        )
    # epoch 2 of 3 at 0.05 × cosine(1, 3) = 0.05 × 0.75, and epoch 3 at 0.05 × 0.25
    assert [r.lr for r in history] == pytest.approx([0.1, 0.0375, 0.0125])
    saved = torch.load(ckpt, weights_only=True)
    assert (
        saved["settings"]["lr"] == 0.05
        and saved["trainer"]["optimizer"]["param_groups"][0]["momentum"] == 0.5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)  # the same settings: no warning
        modeconn.train_model(
            model, data, epochs=4, lr=0.05, schedule="cosine", momentum=0.5, checkpoint=ckpt, progress=False
        )
