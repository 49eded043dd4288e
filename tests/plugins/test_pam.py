"""The ``pam`` optimizer (paper eq. 5): a hard permutation gives the ordinary curve through the
permuted end point, rounding keeps a hard permutation, PAM from the identity lowers the
objective and moves toward a planted permutation, every group of a ResNet (the first stage's
residual stream included) is learned, and an interrupted fit resumes to the same result."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from modeconn.plugins.pam import PAM

import modeconn
from modeconn import Curve, discover, permutation_matrix, permute
from modeconn.training import Callback
from modeconn.training.loop import as_loader


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    from modeconn.data.digits import Digits

    d = Digits(train=True, image_size=8, augment=False)
    return d.data.reshape(len(d), -1), d.targets


@pytest.fixture(scope="module")
def trained(digits):
    """A briefly trained MLP on the embedded digits, and the same network with its hidden units
    permuted by a planted permutation."""
    a = _mlp(0)
    modeconn.train_model(a, digits, epochs=5, lr=0.1, batch_size=64, progress=False)
    spec = discover(a, digits[0][:2])
    planted = spec.random_permutation(3)
    return a, permute(a, spec, planted), spec, planted


def _set_up(curve, data, epochs, **options) -> PAM:
    pam = PAM(curve, modeconn.Settings(lr=0.1), epochs=epochs, **options)
    pam.on_fit_start(as_loader(data, 64), epochs)
    return pam


def _outputs(curve, x, ts=(0.0, 0.3, 0.5, 0.8, 1.0)):
    curve.eval()
    with torch.no_grad():
        return [curve(x, t) for t in ts]


def test_a_hard_permutation_gives_the_ordinary_curve_through_the_permuted_end(trained, digits):
    a, b, spec, planted = trained
    x = digits[0][:32]
    ordinary = Curve(a, permute(b, spec, planted))
    pam = _set_up(Curve(a, b), digits, 2, init=planted, perm_epochs=1, curve_epochs=1)
    for got, want in zip(_outputs(pam.curve, x), _outputs(ordinary, x)):
        assert torch.allclose(got, want, atol=1e-5)
    # the relaxed parametrization at the same (hard) matrices computes the same curve
    pam.on_epoch_start(1)
    assert pam.curve.parametrization is not None
    for got, want in zip(_outputs(pam.curve, x), _outputs(ordinary, x)):
        assert torch.allclose(got, want, atol=1e-5)


def test_the_bends_keep_their_offset_from_the_segment_when_b_is_permuted(trained, digits):
    """θ_bend = ½θ_A + ½P·θ_B + φ: a fitted curve's φ survives a new permutation of B."""
    a, b, spec, planted = trained
    curve = Curve(a, b)
    with torch.no_grad():
        curve.bends.add_(0.01 * torch.randn_like(curve.bends))
    phi = curve.bends.detach() - torch.lerp(curve.ends[0], curve.ends[1], 0.5)
    pam = _set_up(curve, digits, 1, init=planted, perm_epochs=1, curve_epochs=0)
    after = pam.curve.bends.detach() - torch.lerp(pam.curve.ends[0], pam.curve.ends[1], 0.5)
    assert torch.allclose(after, phi, atol=1e-6)
    assert not torch.allclose(pam.curve.ends[1], curve.flatten(b.state_dict()))  # B did move


def test_a_second_outer_iteration_starts_from_the_curve_the_first_one_fitted(trained, digits):
    a, b, spec, planted = trained
    x = digits[0][:64]
    checked = []

    class Check(Callback):
        def on_epoch_start(self, state):
            pam = state.trainer
            if state.epoch == 3:  # the second permutation phase, before its first step
                state.module.eval()
                with torch.no_grad():
                    relaxed = state.module(x, 0.5)
                    state.module.set_parametrization(None)
                    plain = state.module(x, 0.5)
                    state.module.set_parametrization(pam._soft_rows)
                state.module.train()
                checked.append(torch.allclose(relaxed, plain, atol=1e-5))

    torch.manual_seed(0)
    modeconn.fit_curve(
        Curve(a, b),
        digits,
        optimizer="pam",
        epochs=4,
        outer_iters=2,
        perm_epochs=1,
        curve_epochs=1,
        lr=0.1,
        batch_size=128,
        score_batches=2,
        candidates=2,
        callbacks=[Check()],
        progress=False,
    )
    assert checked == [True]


def test_rounding_a_hard_permutation_returns_it(trained, digits):
    a, b, spec, planted = trained
    pam = _set_up(Curve(a, b), digits, 1, perm_epochs=1, curve_epochs=0, candidates=8)
    pam.on_epoch_start(1)
    with torch.no_grad():
        for g, m in pam.matrices.items():
            m.copy_(permutation_matrix(planted[g], m.dtype))
    candidates = pam.rounding_candidates()
    assert [source for source, _ in candidates] == ["previous", "assignment"]  # samples = assignment
    assert all(torch.equal(candidates[1][1][g], planted[g]) for g in pam.groups)
    pam.perms = dict(planted)  # with the previous permutation the same, rounding keeps it
    pam.on_epoch_end(1)
    assert all(torch.equal(pam.perms[g], planted[g]) for g in pam.groups)


def test_pam_from_the_identity_lowers_the_objective_and_moves_toward_the_planted_permutation(trained, digits):
    a, b, spec, planted = trained
    torch.manual_seed(0)
    history = modeconn.fit_curve(
        Curve(a, b),
        digits,
        optimizer="pam",
        epochs=10,
        perm_epochs=10,
        curve_epochs=0,
        lr=0.1,
        perm_lr_scale=20,
        batch_size=64,
        score_batches=4,
        progress=False,
    )
    (log,) = history.summary["log"]
    perms = history.summary["perms"]
    assert log["objective_rounded"] < 0.5 * log["objective_start"], log
    assert log["distance_from_ds"] < 0.1 and log["candidates"] > 2
    assert sum(log["reassigned"].values()) > 0

    def flat_distance(p):  # |θ_A − P·θ_B|, zero at the planted permutation
        moved = modeconn.permute_state_dict(b.state_dict(), spec, p)
        return sum(float((v - moved[k]).pow(2).sum()) for k, v in a.state_dict().items()) ** 0.5

    assert flat_distance(perms) < flat_distance(spec.identity())
    groups = [g.name for g in spec.permutable]
    agree = sum(int((perms[g] == planted[g]).sum()) for g in groups)
    start = sum(int((torch.arange(len(planted[g])) == planted[g]).sum()) for g in groups)
    assert agree > start


def test_every_residual_group_of_resnet32_gets_a_learnable_permutation():
    torch.manual_seed(0)
    a, b = (modeconn.create_model("resnet32", width=2) for _ in range(2))
    data = (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    pam = _set_up(Curve(a, b), data, 2, perm_epochs=1, curve_epochs=1, score_batches=1)
    spec = pam.spec
    assert (
        set(pam.groups) == {g.name for g in spec.permutable} and len(pam.groups) == 18
    )  # 3 streams + 15 inner
    stream = next(
        g for g in spec.permutable if any(s.tensor == "conv1.weight" and s.axis == 0 for s in g.slices)
    )
    first_stage = {s.tensor for s in stream.slices}
    assert "layer1.0.conv1.weight" in first_stage and "layer1.4.conv2.weight" in first_stage
    pam.on_epoch_start(1)
    before = {g: m.detach().clone() for g, m in pam.matrices.items()}
    pam.training_step(*data)
    moved = [g for g, m in pam.matrices.items() if not torch.equal(m, before[g])]
    assert set(moved) == set(pam.groups), sorted(set(pam.groups) - set(moved))


class _Interrupt(Callback):
    def __init__(self, after: int):
        self.after = after

    def on_epoch_end(self, state):
        if state.epoch == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt_after", [1, 2])  # inside the permutation phase, after rounding
def test_an_interrupted_fit_resumes_to_the_same_result(trained, digits, tmp_path, interrupt_after):
    a, b, spec, planted = trained
    start = spec.random_permutation(5)  # B as the curve holds it is permuted from the start

    def fit(checkpoint, callbacks=()):
        torch.manual_seed(7)
        curve = Curve(a, b)
        history = modeconn.fit_curve(
            curve,
            digits,
            optimizer="pam",
            epochs=3,
            perm_epochs=2,
            lr=0.1,
            perm_lr_scale=20,
            init=start,
            batch_size=128,
            score_batches=2,
            candidates=4,
            checkpoint=checkpoint,
            callbacks=callbacks,
            progress=False,
        )
        return curve, history

    whole, whole_history = fit(tmp_path / "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut.pt", [_Interrupt(interrupt_after)])
    resumed, resumed_history = fit(tmp_path / "cut.pt")
    assert torch.allclose(resumed.bends, whole.bends, atol=1e-6)
    assert torch.equal(resumed.ends, whole.ends)
    assert all(
        torch.equal(resumed_history.summary["perms"][g], whole_history.summary["perms"][g])
        for g in spec.groups
    )
    assert resumed_history.summary["log"] == whole_history.summary["log"]


def test_epochs_that_do_not_match_the_phases_are_refused(trained, digits):
    a, b, _, _ = trained
    with pytest.raises(modeconn.InvalidArgumentError, match="outer_iters"):
        modeconn.fit_curve(
            Curve(a, b), digits, optimizer="pam", epochs=5, perm_epochs=2, curve_epochs=2, progress=False
        )


def test_bad_options_are_refused_with_the_choices():
    a, b = _mlp(0), _mlp(1)
    with pytest.raises(modeconn.InvalidArgumentError, match="identity, alignment"):
        PAM(Curve(a, b), modeconn.Settings(lr=0.1), epochs=21, init="aligned")
    with pytest.raises(modeconn.InvalidArgumentError, match="alternating, exact, sinkhorn"):
        PAM(Curve(a, b), modeconn.Settings(lr=0.1), epochs=21, projection="dykstra")


def test_init_alignment_starts_from_the_alignment(trained, digits):
    a, b, spec, planted = trained
    pam = _set_up(Curve(a, b), digits, 1, init="alignment", perm_epochs=1, curve_epochs=0)
    # B = πA exactly, so the alignment is the planted permutation and the curve's B is A
    assert all(
        torch.equal(pam.perms[g.name], modeconn.align(a, b, digits[0][:512]).perms[g.name])
        for g in spec.permutable
    )
    assert torch.allclose(pam.curve.ends[1], pam.curve.ends[0], atol=1e-6)
