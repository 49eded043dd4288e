"""``modeconn.training.trainer``: the loss, one training step, the optimizer and schedule a
``Trainer`` builds, its checkpointable state, ``CurveOptimizer``'s draws of t, and
``optimizer_options`` (the end-to-end loops are test_fit.py's)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modeconn import Curve, Settings
from modeconn.errors import DataError, InvalidArgumentError, UnknownPluginError
from modeconn.training.trainer import (
    AUX_WEIGHT,
    CurveOptimizer,
    Trainer,
    classification_loss,
    optimizer_options,
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _next_epoch(trainer: Trainer) -> None:
    """The schedule's step at an epoch's end, after the optimizer's as torch expects (a step
    without gradients, which changes nothing)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.optimizer.step()
    trainer.scheduler.step()


# -- classification_loss ----------------------------------------------------------------------------


def test_classification_loss_is_cross_entropy_of_the_main_logits():
    logits, y = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    loss, main = classification_loss(logits, y)
    assert main is logits
    torch.testing.assert_close(loss, F.cross_entropy(logits, y), rtol=0, atol=0)
    # with one auxiliary head, weighted by AUX_WEIGHT unless told otherwise
    aux = torch.randn(6, 5)
    loss, main = classification_loss([logits, aux], y)
    assert main is logits
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + AUX_WEIGHT * F.cross_entropy(aux, y))
    loss, _ = classification_loss((logits, aux), y, aux_weight=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))


def test_classification_loss_scores_token_logits_per_token():
    logits, y = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    loss, main = classification_loss(logits, y)
    assert main is logits
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(14, 11), y.reshape(14)))
    loss, _ = classification_loss(logits, y, next_token=True)  # position t predicts token t + 1
    expected = F.cross_entropy(logits[:, :-1].reshape(12, 11), y[:, 1:].reshape(12))
    torch.testing.assert_close(loss, expected)


def test_classification_loss_refuses_outputs_that_are_not_logits():
    y = torch.tensor([0, 1])
    with pytest.raises(DataError, match="the model returned a tuple that holds more than logits"):
        classification_loss((torch.randn(2, 3), "extra"), y)


# -- Trainer ----------------------------------------------------------------------------------------


def test_trainer_builds_sgd_and_the_schedule_from_its_settings():
    model = _net()
    model[0].bias.requires_grad_(False)  # frozen parameters are not trained
    settings = Settings(lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-3, lr_step=2, lr_gamma=0.1)
    trainer = Trainer(model, settings, epochs=6)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    (group,) = trainer.optimizer.param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters() if p.requires_grad]
    assert len(group["params"]) == 3
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.5, True, 1e-3)
    rates = []
    for _ in range(6):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        _next_epoch(trainer)
    assert rates == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002])


def test_a_training_step_is_one_sgd_step_on_the_loss():
    model, (x, y) = _net(), _batch()
    reference = copy.deepcopy(model)
    trainer = Trainer(model, Settings(lr=0.5, momentum=0.0, weight_decay=0.0), epochs=1)
    loss, logits = trainer.training_step(x, y)
    expected_loss = F.cross_entropy(reference(x), y)
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss.detach())
    assert not loss.requires_grad and not logits.requires_grad
    torch.testing.assert_close(logits, reference(x).detach())
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q - 0.5 * q.grad)
    # a few more steps lower the loss on the batch
    for _ in range(20):
        trainer.training_step(x, y)
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) < float(loss)


def test_a_loss_fn_replaces_the_cross_entropy_and_is_checked():
    model, (x, y) = _net(), _batch()
    targets = torch.randn(16, 3)
    mse = Trainer(model, epochs=1, loss_fn=lambda out, t: F.mse_loss(out, t))
    loss, logits = mse.loss(x, targets)
    torch.testing.assert_close(loss, F.mse_loss(model(x), targets))
    torch.testing.assert_close(logits, model(x))

    def per_sample(out, t):
        return F.cross_entropy(out, t, reduction="none")

    with pytest.raises(
        InvalidArgumentError, match=r"must return a scalar tensor \(shape \(\)\); it returned shape \(16,\)"
    ):
        Trainer(model, epochs=1, loss_fn=per_sample).loss(x, y)
    with pytest.raises(InvalidArgumentError, match="returned a tensor without a gradient"):
        Trainer(model, epochs=1, loss_fn=lambda out, t: torch.tensor(1.0)).loss(x, y)
    with pytest.raises(InvalidArgumentError, match="it returned float"):
        Trainer(model, epochs=1, loss_fn=lambda out, t: 1.0).loss(x, y)


def test_trainer_arguments_are_checked():
    with pytest.raises(InvalidArgumentError, match="adversary must be callable as adversary"):
        Trainer(_net(), epochs=1, adversary="pgd")
    with pytest.raises(InvalidArgumentError, match="loss_fn must be callable as loss_fn"):
        Trainer(_net(), epochs=1, loss_fn="mse")
    frozen = _net().requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="Sequential has no trainable parameters"):
        Trainer(frozen, epochs=1)


def test_an_adversary_replaces_the_inputs_it_is_given():
    model, (x, y) = _net(), _batch()
    seen = []

    def flip(m, inputs, targets):
        seen.append((m, targets))
        return -inputs

    loss, _ = Trainer(model, epochs=1, adversary=flip).loss(x, y)
    assert seen[0][0] is model and torch.equal(seen[0][1], y)
    torch.testing.assert_close(loss, F.cross_entropy(model(-x), y))


def test_a_trainer_restored_from_its_state_continues_identically():
    (x, y), settings = _batch(), Settings(lr=0.1, momentum=0.9, lr_step=1, lr_gamma=0.5)
    model = _net()
    trainer = Trainer(model, settings, epochs=4)
    for _ in range(3):
        trainer.training_step(x, y)
    _next_epoch(trainer)
    state = copy.deepcopy(trainer.state_dict())
    twin = copy.deepcopy(model)
    restored = Trainer(twin, settings, epochs=4)
    restored.load_state_dict(state)
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    for _ in range(2):
        trainer.training_step(x, y)
        restored.training_step(x, y)  # the momentum buffers came back too
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_apply_settings_changes_the_optimizer_from_the_current_epoch():
    trainer = Trainer(_net(), Settings(lr=0.1, lr_step=1, lr_gamma=0.5), epochs=4)
    _next_epoch(trainer)
    _next_epoch(trainer)  # epoch 2: factor 0.25
    trainer.settings = Settings(lr=0.4, momentum=0.0, weight_decay=0.0)
    trainer.apply_settings()
    (group,) = trainer.optimizer.param_groups
    assert group["lr"] == pytest.approx(0.4 * 0.25)
    assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.4, 0.0, 0.0)
    _next_epoch(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.4 * 0.125)


# -- CurveOptimizer ---------------------------------------------------------------------------------


@pytest.fixture
def curve():
    return Curve(_net(0), _net(1), num_bends=1)


def test_curve_optimizer_trains_the_bends_at_seeded_draws_of_t(curve):
    torch.manual_seed(7)
    first = CurveOptimizer(curve, epochs=1)
    torch.manual_seed(7)
    second = CurveOptimizer(copy.deepcopy(curve), epochs=1)
    draws = [first.sample_t() for _ in range(5)]
    assert draws == [second.sample_t() for _ in range(5)]  # seeded from the global generator
    torch.manual_seed(8)
    assert CurveOptimizer(copy.deepcopy(curve), epochs=1).sample_t() != draws[0]
    assert all(0.0 <= t <= 1.0 for t in draws) and len(set(draws)) == 5
    assert first.parameters() == [curve.bends]
    # the loss is the curve's at the t drawn next
    x, y = _batch()
    t = copy.deepcopy(first.generator)
    expected_t = float(torch.rand((), generator=t))
    loss, logits = first.loss(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(curve(x, expected_t), y))
    torch.testing.assert_close(logits, curve(x, expected_t))


def test_curve_optimizer_state_keeps_the_sequence_of_t(curve):
    trainer = CurveOptimizer(curve, epochs=2)
    trainer.sample_t()
    state = copy.deepcopy(trainer.state_dict())
    assert {"optimizer", "scheduler", "t_generator"} <= set(state)
    upcoming = [trainer.sample_t() for _ in range(3)]
    restored = CurveOptimizer(copy.deepcopy(curve), epochs=2)
    restored.load_state_dict(state)
    assert [restored.sample_t() for _ in range(3)] == upcoming


# -- optimizer_options ------------------------------------------------------------------------------


def test_optimizer_options_are_the_keyword_parameters_less_what_fit_curve_passes():
    assert optimizer_options("sgd") == {"aux_weight": AUX_WEIGHT, "adversary": None}
    pgd = optimizer_options("pgd")
    assert pgd["attack"] == "train" and pgd["aux_weight"] == AUX_WEIGHT  # its own, then its bases'
    assert not {"settings", "epochs", "curve", "module", "loss_fn"} & set(pgd)

    class Mine(CurveOptimizer):
        def __init__(self, curve, settings=None, *, steps: int = 3, tag="x", **kwargs):
            super().__init__(curve, settings, **kwargs)

    class Closed(CurveOptimizer):  # no **kwargs: its bases' options are not passed on
        def __init__(self, curve, settings=None, *, only: float = 1.0):
            super().__init__(curve, settings, epochs=1)

    assert optimizer_options(Mine) == {"steps": 3, "tag": "x", "aux_weight": AUX_WEIGHT, "adversary": None}
    assert optimizer_options(Closed, given=["only"]) == {"only": 1.0}


def test_optimizer_options_reject_unknown_options_listing_the_known_ones():
    message = r"optimizer 'sgd' takes no option\(s\) lr, zzz; its options: aux_weight=0\.3, adversary=None"
    with pytest.raises(InvalidArgumentError, match=message):
        optimizer_options("sgd", given=["aux_weight", "zzz", "lr"])
    with pytest.raises(
        InvalidArgumentError, match=r"optimizer 'pgd' takes no option\(s\) epochs; its options: attack="
    ):
        optimizer_options("pgd", given=["epochs"])  # fit_curve passes it itself
    with pytest.raises(
        UnknownPluginError, match=r"no optimizer plugin named 'adam'. Available: pam, pgd, sgd"
    ):
        optimizer_options("adam")
    assert optimizer_options("sgd", given=["aux_weight"]) == optimizer_options("sgd")
