"""PGD (modeconn.attacks): stays in the ε-ball and the input range for every setting, is the
identity with no steps and no random start, lowers accuracy more as ε grows, leaves parameter
gradients and the caller's mode alone, agrees with torchattacks, and measures through the
metric seam; BatchNorm statistics on adversarial data count only the examples."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import modeconn
from modeconn.attacks import PGD, PRESETS, RobustClassification, pgd
from modeconn.metrics import Classification, measure


def _conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.fixture(scope="module")
def digits_model():
    """An MLP trained on the embedded digits in [0, 1] (normalization inside the model)."""
    from modeconn.data.digits import Digits

    train, test = (Digits(train=t, image_size=8, augment=False, normalize=False) for t in (True, False))
    data = (train.data.flatten(1), train.targets)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    modeconn.train_model(model, data, epochs=15, lr=0.1, batch_size=64, progress=False)
    return model.eval(), (test.data.flatten(1), test.targets)


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(0, 16 / 255),
    steps=st.integers(0, 4),
    n=st.integers(1, 3),
    size=st.integers(2, 6),
    norm=st.sampled_from(["linf", "l2"]),
    random_start=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_pgd_stays_in_the_ball_and_the_input_range(eps, steps, n, size, norm, random_start, seed):
    model = _conv().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    adv = pgd(
        model, x, y, eps=eps, alpha=eps / 3, steps=steps, norm=norm, random_start=random_start, generator=gen
    )
    delta = (adv - x).flatten(1)
    size_ = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size_.max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_no_steps_and_no_random_start_return_x():
    model = _conv().eval()
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(pgd(model, x, torch.tensor([0, 1]), steps=0, random_start=False), x)


def test_robust_accuracy_is_below_clean_and_falls_with_eps(digits_model):
    model, (x, y) = digits_model
    clean = float((model(x).argmax(1) == y).float().mean())
    robust = []
    for eps in (0.02, 0.05, 0.1):
        adv = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=10, generator=torch.Generator().manual_seed(0))
        robust.append(float((model(adv).argmax(1) == y).float().mean()))
    assert clean > 0.8
    assert clean > robust[0] > robust[1] > robust[2], (clean, robust)


def test_the_attack_leaves_parameter_gradients_and_modes_alone():
    model = _conv().train()
    marker = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), marker):
        p.grad = g.clone()
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    pgd(model, x, y, steps=3)
    assert model.training
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), marker))
    model.eval()
    bn = model[1]
    before = bn.running_mean.clone()
    pgd(model, x, y, steps=3)
    assert not model.training and torch.equal(
        bn.running_mean, before
    )  # eval: running statistics used, not updated


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(modeconn.InvalidArgumentError, match="linf, l2"):
        pgd(_conv(), torch.rand(1, 3, 4, 4), torch.tensor([0]), norm="l1")
    with pytest.raises(modeconn.InvalidArgumentError, match="presets: train, eval"):
        PGD.preset("madry")
    with pytest.raises(modeconn.InvalidArgumentError, match="one floating-point input tensor"):
        pgd(_conv(), torch.randint(0, 3, (1, 3, 4, 4)), torch.tensor([0]))


def test_presets_are_the_published_setups():
    assert PRESETS["train"] == PGD(eps=8 / 255, alpha=2 / 255, steps=5)  # the paper's code: α = ε/4
    assert PRESETS["eval"] == PGD(eps=8 / 255, alpha=2 / 255, steps=10)
    assert PGD.preset("eval", steps=20).steps == 20
    assert PRESETS["train"].describe() == "PGD-5 linf eps=8/255 alpha=2/255"


def test_modeconn_and_torchattacks_agree(digits_model):
    """An independent implementation: without a random start the examples match; with one
    (each library draws its own), robust accuracies agree within 1 point."""
    torchattacks = pytest.importorskip("torchattacks")
    model, (x, y) = digits_model
    images = x.view(-1, 1, 8, 8)

    class Images(nn.Module):  # torchattacks wants image-shaped inputs and a module with parameters
        def __init__(self):
            super().__init__()
            self.mlp = model

        def forward(self, v):
            return self.mlp(v.flatten(1))

    net = Images().eval()
    eps, alpha, steps = 0.05, 0.0125, 10
    ours = pgd(net, images, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    theirs = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=False)(images, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
    accuracy = lambda adv: 100 * float((net(adv).argmax(1) == y).float().mean())  # noqa: E731
    torch.manual_seed(0)
    ours = pgd(net, images, y, eps=eps, alpha=alpha, steps=steps)
    theirs = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=True)(images, y)
    assert abs(accuracy(ours) - accuracy(theirs)) <= 1.0, (accuracy(ours), accuracy(theirs))
    l2_ours = pgd(net, images, y, eps=0.5, alpha=0.1, steps=steps, norm="l2", random_start=False)
    l2_theirs = torchattacks.PGDL2(net, eps=0.5, alpha=0.1, steps=steps, random_start=False)(images, y)
    assert abs(accuracy(l2_ours) - accuracy(l2_theirs)) <= 1.0


def test_robust_metric_repeats_with_its_seed(digits_model):
    model, data = digits_model
    metrics = [Classification(), RobustClassification(PGD(eps=0.05, alpha=0.02, steps=5), seed=3)]
    first, second = measure(model, data, metrics), measure(model, data, metrics)
    assert first == second and first["robust_accuracy"] < first["accuracy"]


def test_batchnorm_statistics_on_adversarial_data_count_only_the_examples():
    """The attack's own forward passes (here: three on wildly scaled inputs) must not count."""
    data = [(torch.rand(8, 3, 5, 5), torch.randint(0, 3, (8,))) for _ in range(3)]

    def shifted(model, x, y, generator=None):
        for _ in range(3):
            model(10 * x)
        return 0.5 * x

    adversarial = modeconn.update_bn(_conv(), data, adversary=shifted)
    expected = modeconn.update_bn(_conv(), [(0.5 * x, y) for x, y in data])
    assert torch.allclose(adversarial[1].running_mean, expected[1].running_mean)
    assert torch.allclose(adversarial[1].running_var, expected[1].running_var)
