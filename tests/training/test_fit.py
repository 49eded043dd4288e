import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modeconn
from modeconn import Curve, fit_curve, train_model
from modeconn.errors import ModeconnError, UnknownPluginError
from modeconn.training import Callback, CurveOptimizer, classification_loss


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def test_classification_loss_adds_auxiliary_heads():
    y = torch.tensor([1, 2, 3])
    main, aux1, aux2 = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    loss, logits = classification_loss((main, aux1, aux2), y, aux_weight=0.3)
    expected = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    torch.testing.assert_close(loss, expected)
    assert logits is main
    assert classification_loss(main, y)[0] == F.cross_entropy(main, y)
    assert classification_loss({"logits": main}, y)[0] == F.cross_entropy(main, y)  # a ModelOutput's
    with pytest.raises(TypeError, match="expected logits"):  # DataError is a TypeError
        classification_loss({"hidden_states": main}, y)


def test_train_model_learns_and_records_epochs(digits_pair):
    from modeconn.data import digits

    torch.manual_seed(0)
    model = modeconn.create_model("tinyten", in_chans=1, widths=(8, 8, 16, 16, 16, 32, 32, 32))
    seen = []
    history = train_model(
        model,
        digits(train=True, augment=False),
        epochs=3,
        lr=0.05,
        lr_step=2,
        progress=False,
        callbacks=[lambda state: seen.append(state.epoch)],
    )
    assert [r.epoch for r in history] == seen == [1, 2, 3]
    assert [r.lr for r in history] == [0.05, 0.05, 0.025]  # halved every lr_step epochs
    assert history[-1].loss < history[0].loss
    assert not model.training
    # chance is 10%; three epochs leave eval-mode accuracy (running BN statistics) spread over
    # 20-70% across seeds, so the bound is loose and the training accuracy carries the check
    assert history[-1].accuracy > 50.0
    assert modeconn.evaluate(model, digits_pair[2])[1] > 20.0


def test_train_model_trains_googlenet_style_auxiliary_heads():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return (self.body(x), self.aux(x)) if self.training else self.body(x)

    torch.manual_seed(0)
    model = Aux()
    before = model.aux.weight.clone()
    train_model(
        model, (torch.randn(32, 4), torch.randint(0, 3, (32,))), epochs=1, batch_size=8, progress=False
    )
    assert not torch.equal(before, model.aux.weight)  # the auxiliary loss reached its head


def test_seeded_training_repeats_exactly(tiny_resnet):
    states = []
    for _ in range(2):
        model = tiny_resnet(0)
        torch.manual_seed(5)
        train_model(model, _data(), epochs=2, batch_size=32, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_fit_curve_lowers_the_loss_on_a_fixed_batch_and_keeps_the_ends(tiny_resnet):
    a, b = tiny_resnet(0).eval(), tiny_resnet(1).eval()
    x, y = _data(64)
    curve = Curve(a, b)
    ends = curve.ends.clone()

    def mean_loss():
        curve.train()  # batch statistics, as in training
        with torch.no_grad():
            return sum(float(F.cross_entropy(curve(x, t), y)) for t in torch.linspace(0, 1, 9).tolist()) / 9

    before = mean_loss()
    torch.manual_seed(0)
    history = fit_curve(curve, [(x, y)] * 8, epochs=2, lr=0.05, progress=False)
    assert len(history) == 2
    assert mean_loss() < before
    assert torch.equal(curve.ends, ends)
    with torch.no_grad():
        curve.eval()
        assert torch.equal(curve(x, 0.0), a(x)) and torch.equal(curve(x, 1.0), b(x))


def test_fit_curve_errors(tiny_resnet):
    a, b = tiny_resnet(0), tiny_resnet(1)
    with pytest.raises(ValueError, match="no learnable bends"):
        fit_curve(Curve(a, b, family="linear"), _data(), epochs=1, progress=False)
    with pytest.raises(UnknownPluginError, match="sgd"):
        fit_curve(Curve(a, b), _data(), optimizer="adamw", epochs=1, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_curve(Curve(a, b), iter([_data(8)]), epochs=1, progress=False)
    with pytest.raises(
        ModeconnError, match=r"'pam' takes no option\(s\) perm_epoch; its options: init=.*perm_epochs=20"
    ):
        fit_curve(Curve(a, b), _data(), optimizer="pam", epochs=1, progress=False, perm_epoch=2)
    with pytest.raises(ModeconnError, match=r"'sgd' takes no option\(s\) foo; its options: aux_weight=0.3"):
        fit_curve(Curve(a, b), _data(), epochs=1, progress=False, foo=1)
    with pytest.raises(ModeconnError, match=r"diverged in epoch 1, batch 1.*Lower the learning rate"):
        fit_curve(
            Curve(a, b),
            [(torch.full((4, 3, 32, 32), float("nan")), torch.zeros(4, dtype=torch.long))],
            epochs=1,
            progress=False,
        )


def test_an_optimizer_plugin_can_act_between_epochs_and_perturb_inputs(fresh_plugins, tiny_resnet):
    """The hooks have what PAM (update the permutation between epochs) and PGD (perturb each
    batch against r(t)) need: what perturb returns is what the network is run on, at the t the
    step uses."""
    calls = {"epochs": [], "ts": []}

    class Probe(CurveOptimizer):
        def __init__(self, curve, *, shift, **kwargs):
            super().__init__(curve, **kwargs)
            self.shift = shift

        def on_epoch_start(self, epoch):
            calls["epochs"].append(epoch)

        def perturb(self, x, y, t):
            calls["ts"].append(t)
            return x + self.shift * (1 + t)  # a perturbation the test can recognize

    class Plugin:
        @modeconn.plugin.hookimpl
        def modeconn_register_optimizers(self, registry):
            registry.add("probe", Probe)

    modeconn.register_plugin(Plugin(), name="probe-plugin")
    curve = Curve(tiny_resnet(0), tiny_resnet(1))
    received = []
    curve.base.conv1.register_forward_pre_hook(lambda m, inputs: received.append(inputs[0].detach().clone()))
    data = [_data(8)] * 3
    fit_curve(curve, data, optimizer="probe", epochs=2, shift=100.0, progress=False)
    assert calls["epochs"] == [1, 2]
    assert len(calls["ts"]) == 6 and all(0.0 <= t <= 1.0 for t in calls["ts"]) and len(set(calls["ts"])) == 6
    assert len(received) == 6
    for seen, t in zip(received, calls["ts"]):
        torch.testing.assert_close(seen, data[0][0] + 100.0 * (1 + t))  # the perturbed batch, at that t


def test_callbacks_can_stop_training(tiny_resnet):
    class StopAfterOne(Callback):
        def __init__(self):
            self.batches = 0

        def on_batch_end(self, state):
            self.batches += 1

        def on_epoch_end(self, state):
            state.stop = True

    cb = StopAfterOne()
    history = train_model(tiny_resnet(0), _data(64), epochs=5, batch_size=16, progress=False, callbacks=[cb])
    assert len(history) == 1 and cb.batches == 4


def test_progress_bars_and_quiet_mode(capsys, tiny_resnet):
    train_model(tiny_resnet(0), _data(32), epochs=1, batch_size=16, progress=True)
    captured = capsys.readouterr()
    assert "train epoch 1: loss" in captured.out
    train_model(tiny_resnet(0), _data(32), epochs=1, batch_size=16, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- loss_fn: what a fit minimizes ---------------------------------------------------------


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _blobs(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


PLAIN = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8, "progress": False}


def first_logit(output, y):
    """A loss of class 0's logit alone: only class 0's row of the last layer gets a gradient."""
    return output[:, 0].mean()


def test_train_model_minimizes_loss_fn():
    model = nn.Linear(4, 3)
    start = copy.deepcopy(model)
    history = train_model(model, _blobs(), epochs=1, loss_fn=first_logit, **PLAIN)
    # d first_logit / d bias[0] = 1 at every step: 4 steps of lr 0.1 move it by exactly 0.4
    torch.testing.assert_close(model.bias[0], start.bias[0] - 0.4)
    assert torch.equal(model.bias[1:], start.bias[1:])  # cross-entropy would move these
    assert torch.equal(model.weight[1:], start.weight[1:])
    assert not torch.equal(model.weight[0], start.weight[0])
    with torch.no_grad():  # the history records loss_fn's value, falling as it trains
        assert history[0].loss < float(first_logit(start(_blobs()[0]), None))


def test_loss_fn_none_is_the_default_and_cross_entropy_reproduces_it():
    def trained(**kwargs):
        model = _mlp(0)
        torch.manual_seed(1)
        history = train_model(model, _blobs(), epochs=2, **PLAIN, **kwargs)
        return model.state_dict(), [r.loss for r in history]

    default, losses = trained()
    for kwargs in ({"loss_fn": None}, {"loss_fn": lambda output, y: F.cross_entropy(output, y)}):
        state, again = trained(**kwargs)
        assert again == losses
        assert all(torch.equal(v, state[k]) for k, v in default.items()), kwargs


@pytest.mark.parametrize(
    "optimizer, options",
    [
        ("sgd", {}),
        ("pgd", {"attack": modeconn.attacks.PGD(eps=0.05, alpha=0.02, steps=1)}),
        ("pam", {"perm_epochs": 1, "curve_epochs": 1, "score_batches": 1, "candidates": 1}),
    ],
)
def test_fit_curve_minimizes_loss_fn_with_every_builtin_optimizer(optimizer, options):
    calls = []

    def constant(output, y):
        """7, with no gradient through the output: the bends must not move."""
        calls.append(y)
        return 0 * output.sum() + 7.0

    curve = Curve(_mlp(0), _mlp(1))
    bends = curve.bends.clone()
    data = [_blobs(8, seed) for seed in range(3)]
    history = fit_curve(curve, data, optimizer=optimizer, epochs=2, loss_fn=constant, **PLAIN, **options)
    assert [r.loss for r in history] == [7.0, 7.0]  # cross-entropy is ~1.1
    torch.testing.assert_close(curve.bends, bends)  # PAM re-forms them from B and φ: a rounding apart
    assert any(torch.equal(y, data[0][1]) for y in calls)  # the batch's target
    if optimizer == "pam":  # permutations are scored by loss_fn too
        assert history.summary["log"][0]["objective_start"] == 7.0


def test_fit_curve_trains_the_bends_by_loss_fn():
    curve = Curve(_mlp(0), _mlp(1))
    before = curve.unflatten(curve.bends[0].clone())
    fit_curve(curve, [_blobs(8, seed) for seed in range(3)], epochs=1, loss_fn=first_logit, **PLAIN)
    after = curve.unflatten(curve.bends[0])
    assert torch.equal(after["2.bias"][1:], before["2.bias"][1:])  # only class 0's row learns
    assert torch.equal(after["2.weight"][1:], before["2.weight"][1:])
    assert not torch.equal(after["2.bias"][0], before["2.bias"][0])


def test_loss_fn_errors():
    model, curve = _mlp(0), Curve(_mlp(0), _mlp(1))
    with pytest.raises(modeconn.InvalidArgumentError, match=r"loss_fn must be callable .* got str 'mse'"):
        train_model(model, _blobs(), epochs=1, loss_fn="mse", **PLAIN)
    with pytest.raises(modeconn.InvalidArgumentError, match=r"loss_fn must be callable .* got int 3"):
        fit_curve(curve, _blobs(), epochs=1, loss_fn=3, **PLAIN)

    def per_sample(output, y):
        return F.cross_entropy(output, y, reduction="none")

    message = r"loss_fn .*per_sample must return a scalar tensor \(shape \(\)\); it returned shape \(8,\)"
    with pytest.raises(modeconn.InvalidArgumentError, match=message):
        train_model(model, _blobs(), epochs=1, loss_fn=per_sample, **PLAIN)
    for optimizer, options in (("sgd", {}), ("pam", {"perm_epochs": 1})):  # plugins pass it on as it is
        with pytest.raises(modeconn.InvalidArgumentError, match=message):
            fit_curve(curve, _blobs(), optimizer=optimizer, epochs=2, loss_fn=per_sample, **PLAIN, **options)
    with pytest.raises(modeconn.InvalidArgumentError, match=r"it returned float\."):
        train_model(model, _blobs(), epochs=1, loss_fn=lambda output, y: 1.0, **PLAIN)
    with pytest.raises(modeconn.InvalidArgumentError, match="without a gradient"):
        train_model(model, _blobs(), epochs=1, loss_fn=lambda output, y: output.sum().detach(), **PLAIN)


def test_a_run_with_loss_fn_resumes_where_it_stopped(tmp_path):
    loss_fn = lambda output, y: F.cross_entropy(output, y, label_smoothing=0.2)  # noqa: E731 (unpicklable)

    def run(epochs, checkpoint=None):
        curve = Curve(_mlp(0), _mlp(1))
        torch.manual_seed(2)
        history = fit_curve(curve, _blobs(), epochs=epochs, loss_fn=loss_fn, checkpoint=checkpoint, **PLAIN)
        return curve, history

    whole, history = run(2)
    run(1, tmp_path / "fit.pt")
    resumed, resumed_history = run(2, tmp_path / "fit.pt")
    assert [r.loss for r in resumed_history] == [r.loss for r in history]
    assert torch.equal(resumed.bends, whole.bends)
