"""REPAIR: each corrected unit's statistics become the references' weighted average, folded into
the layer producing it."""

import pytest
import torch
import torch.nn as nn

import modeconn
from modeconn.errors import InvalidArgumentError
from modeconn.merging import ReferenceStatistics, average_models, correction_sites, repair
from modeconn.merging.correction import _measure


def _mlp(seed: int, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16, bias=bias),
        nn.ReLU(),
        nn.Linear(16, 12),
        nn.LayerNorm(12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )


def _stats(model, sites, x):
    moments = _measure(model, sites, [x], None, len(x), False, None)
    return {s: m.mean_std() for s, m in moments.items()}


@pytest.mark.parametrize("weights", ([0.5, 0.5], [0.2, 0.8]))
def test_repaired_units_have_the_weighted_reference_statistics(weights):
    x = torch.randn(400, 6)
    a, b = _mlp(0), _mlp(1)
    b = modeconn.align(a, b, x).model
    mid = average_models([a, b], weights)
    repaired = repair(mid, [a, b], [x], weights=weights, labels=False)
    assert repaired is mid  # in place
    sites, _ = correction_sites(a, [x], labels=False)
    # a LayerNorm normalizes across units, so the Linear before it is corrected too; not the output
    assert sites == ["0", "2", "3"]
    ref = [_stats(m, sites, x) for m in (a, b)]
    got = _stats(repaired, sites, x)
    for s in sites:
        target_mean = sum(w * r[s][0] for w, r in zip(weights, ref))
        target_std = sum(w * r[s][1] for w, r in zip(weights, ref))
        # one batch: the pass normalizes with exactly the statistics it folds in
        torch.testing.assert_close(got[s][0], target_mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[s][1], target_std, atol=1e-4, rtol=1e-3)


def test_repair_keeps_the_class_and_state_dict_keys_and_a_model_against_itself():
    x = torch.randn(300, 6)
    a = _mlp(0)
    keys = list(a.state_dict())
    copy = average_models([a], [1.0])
    repair(copy, [a], [x], labels=False)
    assert type(copy) is type(a) and list(copy.state_dict()) == keys
    torch.testing.assert_close(copy(x), a(x), atol=1e-4, rtol=1e-4)


def test_repair_changes_the_function_where_a_plain_average_collapsed():
    """The planted-bug check: a repair that folds nothing would leave the collapsed variance."""
    x = torch.randn(300, 6)
    a, b = _mlp(0), _mlp(1)
    mid = average_models([a, b], [0.5, 0.5])  # unaligned: the hidden units' variance shrinks
    sites, _ = correction_sites(a, [x], labels=False)
    before = _stats(mid, sites, x)["0"][1]
    target = (_stats(a, sites, x)["0"][1] + _stats(b, sites, x)["0"][1]) / 2
    assert (before < 0.9 * target).any()
    repair(mid, [a, b], [x], labels=False)
    torch.testing.assert_close(_stats(mid, sites, x)["0"][1], target, atol=1e-4, rtol=1e-3)


def test_layers_that_cannot_take_the_correction_are_named_with_the_reason():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.nobias = nn.Linear(4, 5, bias=False)
            self.twice = nn.Linear(5, 5)
            self.out = nn.Linear(5, 2)

        def forward(self, x):
            h = torch.relu(self.b(torch.relu(self.a(x))))
            h = self.twice(self.twice(torch.relu(self.nobias(h))))
            return self.out(h)

    model, x = Tied(), torch.randn(32, 4)
    sites, notes = correction_sites(model, [x], labels=False)
    assert sites == []
    text = "\n".join(notes)
    assert "output is the model's output: out" in text
    assert "runs more than once per forward: twice" in text
    assert "no weight and bias to fold the correction into: nobias" in text
    assert "tied to another module's: a, b" in text


def test_batchnorm_models_are_corrected_at_the_batchnorm_not_the_conv_before_it():
    model = modeconn.create_model("tinyten", widths=(4,) * 8).eval()
    x = torch.randn(8, 3, 32, 32)
    sites, _ = correction_sites(model, [x], labels=False)
    modules = dict(model.named_modules())
    assert sites and all(isinstance(modules[s], nn.BatchNorm2d) for s in sites)


def test_batchnorm_repair_after_a_reset_is_the_reset():
    """After BatchNorm statistics are recomputed, a BatchNorm output has mean β and std |γ|, the
    averages of the references' (measured after their own reset): REPAIR then changes little."""
    torch.manual_seed(0)
    x = torch.randn(128, 3, 32, 32)
    a, b = (modeconn.create_model("tinyten", widths=(4,) * 8) for _ in range(2))
    for m in (a, b):
        with torch.no_grad():
            for p in m.parameters():
                if p.ndim == 1:
                    p.add_(0.3 * torch.rand_like(p))  # γ > 0: no sign flips between the two
    mid = modeconn.update_bn(average_models([a, b], [0.5, 0.5]), [x])
    reset = average_models([mid], [1.0]).eval()
    repair(mid, [a, b], [x], labels=False, batch_size=128)
    torch.testing.assert_close(mid.eval()(x), reset(x), atol=2e-3, rtol=2e-3)


def test_repair_needs_data_and_one_architecture():
    a = _mlp(0)
    with pytest.raises(InvalidArgumentError, match="repair needs data"):
        repair(a, [a], None)
    other = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(InvalidArgumentError, match="no module '2' that the references have"):
        repair(other, [a], [torch.randn(4, 6)], labels=False)
    with pytest.raises(Exception, match=r"references\[1\] differs"):
        ReferenceStatistics.measure([a, other], [torch.randn(4, 6)], labels=False)


def test_evaluate_line_repaired_keeps_its_end_points():
    torch.manual_seed(0)
    x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    a, b = _mlp(0), _mlp(1)
    plain = modeconn.evaluate_line(a, b, 3, (x, y))
    fixed = modeconn.evaluate_line(a, b, 3, (x, y), repair=True, repair_data=[x])
    assert fixed.meta["repair"] == "REPAIR"
    assert fixed.loss[0] == pytest.approx(plain.loss[0], rel=1e-3)
    assert fixed.loss[-1] == pytest.approx(plain.loss[-1], rel=1e-3)
    assert fixed.loss[1] != pytest.approx(plain.loss[1], rel=1e-3)
    with pytest.raises(InvalidArgumentError, match="repair_data"):
        modeconn.evaluate_line(a, b, 3, (x, y), repair=True)
