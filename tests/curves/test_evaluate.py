import json

import pytest
import torch

import modeconn
from modeconn import Curve, PathReport, evaluate_curve


def test_report_along_a_curve(digits_pair, tmp_path):
    a, b, test, bn = digits_pair
    report = evaluate_curve(Curve(a, b), test, bn_data=None, num_points=5, label="stale")
    assert report.t == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(report.loss) == len(report.accuracy) == 5
    # at the end points the curve is the models, with their own statistics
    assert report.accuracy[0] == modeconn.evaluate(a, test)[1]
    assert report.accuracy[-1] == modeconn.evaluate(b, test)[1]
    assert report.loss[0] == pytest.approx(modeconn.evaluate(a, test)[0])
    assert report.average_accuracy == pytest.approx(sum(report.accuracy) / 5)
    assert report.min_accuracy == min(report.accuracy)
    line = [report.loss[0] + t * (report.loss[-1] - report.loss[0]) for t in report.t]
    assert report.barrier == pytest.approx(max(lo - li for lo, li in zip(report.loss, line)))
    assert "stale: average accuracy" in str(report)
    report.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["min_accuracy"] == report.min_accuracy
    report.save(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "t,loss,accuracy"
    PathReport.plot([report, report], tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    with pytest.raises(ValueError, match="num_points"):
        evaluate_curve(Curve(a, b), test, bn_data=None, num_points=1)


def test_bn_recomputation_changes_statistics_and_improves_mid_curve_accuracy(digits_pair):
    """Weights in the middle of the path are not the weights the end points' statistics were
    gathered for (Garipov et al.): recomputed statistics must do better than interpolated ones."""
    a, b, test, bn = digits_pair
    # aligned, so that the middle of the line is a model worth recomputing statistics for:
    # between the unaligned pair it stays near chance either way (9.2% fresh against 9.7% stale
    # when the pair is trained on one thread), and the margin below was luck
    b = modeconn.align(a, b, bn).model
    curve = Curve(a, b)
    stale = curve.model_at(0.5)
    fresh = curve.model_at(0.5, bn_data=bn)
    assert all(torch.equal(p, q) for p, q in zip(stale.parameters(), fresh.parameters()))
    # the recomputed statistics are exactly the average over bn_data's batches of each batch's
    # mean and unbiased variance at every BatchNorm, for r(0.5)'s weights
    seen: dict[str, list] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, i, n=n: seen.setdefault(n, []).append(i[0].detach()))
        for n, m in stale.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    stale.train()
    with torch.no_grad():
        for x, _ in bn:
            stale(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 8
    for name, inputs in seen.items():
        bn_layer = fresh.get_submodule(name)
        mean = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
        var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs]).mean(0)
        torch.testing.assert_close(bn_layer.running_mean, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bn_layer.running_var, var, atol=1e-5, rtol=1e-4)

    stale_report = evaluate_curve(curve, test, bn_data=None, num_points=3)
    fresh_report = evaluate_curve(curve, test, bn_data=bn, num_points=3)
    assert fresh_report.accuracy[1] == modeconn.evaluate(fresh, test)[1]
    assert fresh_report.accuracy[1] > stale_report.accuracy[1] + 5.0
    assert fresh_report.meta["bn_recomputed"] and not stale_report.meta["bn_recomputed"]


def test_robust_evaluation_at_the_start_is_model_a_under_the_same_attack():
    from modeconn.attacks import PGD, RobustClassification
    from modeconn.metrics import Classification, measure

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    data = [(torch.rand(16, 12), torch.randint(0, 3, (16,))) for _ in range(2)]
    metrics = [Classification(), RobustClassification(PGD(eps=0.1, alpha=0.03, steps=4), seed=5)]
    report = evaluate_curve(Curve(a, b), data, bn_data=None, num_points=3, metrics=metrics)
    alone = measure(a, data, metrics)
    assert report.accuracy[0] == alone["accuracy"] and report.loss[0] == pytest.approx(
        alone["loss"], abs=1e-6
    )
    assert report.values("robust_accuracy")[0] == alone["robust_accuracy"]
    assert report.values("robust_loss")[0] == pytest.approx(alone["robust_loss"], abs=1e-6)
    assert report.meta["bn_data"] == "none"
    assert "robust_accuracy" in str(report)


def test_adversarial_bn_data_is_recorded_in_the_report(digits_pair):
    from modeconn.attacks import PGD

    a, b = digits_pair[0], digits_pair[1]
    attack = PGD(eps=0.05, alpha=0.02, steps=1)
    x = torch.rand(32, 1, 32, 32)
    y = torch.randint(0, 10, (32,))
    report = evaluate_curve(Curve(a, b), [(x, y)], bn_data=[(x, y)], num_points=2, bn_adversary=attack)
    assert report.meta["bn_data"] == "adversarial (PGD-1 linf eps=0.05 alpha=0.02)"


def test_bn_data_is_needed_only_with_batchnorm(digits_pair):
    a, b, test, _ = digits_pair
    with pytest.raises(modeconn.InvalidArgumentError, match="the model has BatchNorm: pass bn_data="):
        evaluate_curve(Curve(a, b), test, num_points=2)
    torch.manual_seed(0)
    mlp_a, mlp_b = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)) for _ in range(2))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    report = evaluate_curve(Curve(mlp_a, mlp_b), [(x, y)], num_points=2)
    assert report.meta["bn_data"] == "none" and len(report.accuracy) == 2
