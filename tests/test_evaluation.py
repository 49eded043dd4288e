import json

import pytest
import torch

import modeconn
from modeconn import PathReport, evaluate, interpolate, update_bn


@pytest.fixture
def pair():
    torch.manual_seed(0)
    a, b = modeconn.create_model("resnet20", width=4), modeconn.create_model("resnet20", width=4)
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    return a, b, (x, y)


def test_interpolate_end_points_equal_the_models(pair):
    a, b, data = pair
    report = interpolate(a, b, 3, data)
    assert report.t == [0.0, 0.5, 1.0]
    assert report.loss[0] == pytest.approx(evaluate(a, data)[0])
    assert report.accuracy[-1] == pytest.approx(evaluate(b, data)[1])


def test_update_bn_recomputes_exact_statistics(pair):
    a, _, (x, _) = pair
    update_bn(a, [x[:32], x[32:]])
    with torch.no_grad():
        feats = a.conv1(x)
    torch.testing.assert_close(a.bn1.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert a.bn1.momentum == 0.1 and a.training  # restored


def test_bn_recomputation_changes_the_midpoint(pair):
    a, b, data = pair
    stale = interpolate(a, b, [0.5], data)
    fresh = interpolate(a, b, [0.5], data, bn_data=[data[0]])
    assert stale.loss != fresh.loss


def test_report_barrier_table_and_files(tmp_path):
    r = PathReport([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], [90.0, 50.0, 80.0], label="line")
    assert r.barrier == pytest.approx(1.5)  # 3.0 - (1.0 + 2.0) / 2
    assert (r.average_accuracy, r.min_accuracy) == (pytest.approx(220 / 3), 50.0)
    assert "loss barrier 1.5000" in str(r)
    r.save(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[1] == "0.0,1.0,90.0"
    r.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["barrier"] == pytest.approx(1.5)
    PathReport.plot([r, PathReport([0, 1], [1, 1], [90, 90], label="flat")], tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=".csv or .json"):
        r.save(tmp_path / "r.txt")


def test_evaluate_and_update_bn_restore_mixed_modes(pair):
    a, _, (x, y) = pair
    a.train()
    a.bn1.eval()  # frozen BatchNorm inside a training model
    evaluate(a, (x, y))
    assert a.training and not a.bn1.training
    update_bn(a, [x])
    assert a.training and not a.bn1.training


def test_interpolate_names_where_architectures_differ(pair):
    a, _, data = pair
    with pytest.raises(
        ValueError, match=r"differs from model_a at `conv1.weight`: shape \(4, 3, 3, 3\) vs \(8, 3, 3, 3\)"
    ):
        interpolate(a, modeconn.create_model("resnet20", width=8), 2, data)
