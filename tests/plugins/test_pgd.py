"""The ``pgd`` curve optimizer: each batch is attacked against r(t) at the very t its loss uses,
and the bends then step on the adversarial loss."""

from __future__ import annotations

import torch
import torch.nn as nn
from modeconn.plugins.pgd import PGDCurve

import modeconn
from modeconn.attacks import PGD


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def test_the_attack_runs_at_the_same_t_as_the_loss():
    curve = modeconn.Curve(_mlp(0), _mlp(1)).train()
    trainer = PGDCurve(curve, modeconn.Settings(lr=0.01), epochs=1, attack=PGD(eps=0.1, alpha=0.05, steps=3))
    seen = []  # the first layer's weight in every forward pass, as the network received it
    curve.base[0].register_forward_pre_hook(lambda module, args: seen.append(module.weight.detach().clone()))
    drawn = []
    sample = trainer.sample_t
    trainer.sample_t = lambda: drawn.append(sample()) or drawn[-1]
    x, y = torch.rand(5, 12), torch.randint(0, 3, (5,))
    for _ in range(3):
        seen.clear()
        before = curve.bends.detach().clone()
        trainer.training_step(x, y)
        assert len(seen) == 4  # three attack steps and the loss
        after = curve.bends.detach().clone()
        with torch.no_grad():  # r(t) with the bends the step started from
            curve.bends.copy_(before)
            expected = curve.weights(drawn[-1])["0.weight"].detach().clone()
            curve.bends.copy_(after)
        assert not torch.equal(before, after)
        for w in seen:
            assert torch.allclose(w, expected, atol=1e-6)
    assert len(set(drawn)) == 3  # a fresh t per batch


def test_fit_curve_with_pgd_trains_on_adversarial_examples():
    curve = modeconn.Curve(_mlp(0), _mlp(1))
    start = curve.bends.detach().clone()
    x, y = torch.rand(64, 12), torch.randint(0, 3, (64,))
    modeconn.fit_curve(
        curve,
        (x, y),
        optimizer="pgd",
        attack=PGD(eps=0.1, alpha=0.05, steps=2),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    assert not torch.equal(curve.bends, start)
    assert isinstance(modeconn.get_plugin("optimizer", "pgd").obj, type)
