import json

import pytest
import torch

import modeconn
from modeconn import PathReport, evaluate, evaluate_line


@pytest.fixture
def pair():
    torch.manual_seed(0)
    a, b = modeconn.create_model("resnet20", width=4), modeconn.create_model("resnet20", width=4)
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    return a, b, (x, y)


def test_interpolate_end_points_equal_the_models(pair):
    a, b, data = pair
    report = evaluate_line(a, b, 3, data)
    assert report.t == [0.0, 0.5, 1.0]
    assert report.loss[0] == pytest.approx(evaluate(a, data)[0])
    assert report.accuracy[-1] == pytest.approx(evaluate(b, data)[1])


@pytest.mark.parametrize(
    "t, loss, barrier",
    [
        ([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], 1.5),  # 3.0 - (1.0 + 2.0) / 2
        ([0.0, 0.25, 1.0], [2.0, 2.5, 1.0], 0.75),  # the line is at 1.75 at t = 0.25
        ([0.0, 0.5, 1.0], [1.0, 0.5, 2.0], 0.0),  # below the line everywhere: the end points
        ([0.2, 0.6, 1.0], [1.0, 2.0, 1.0], 1.0),  # t need not start at 0
    ],
)
def test_barrier_is_the_largest_excess_over_the_line(t, loss, barrier):
    assert PathReport(t, loss, [0.0] * len(t)).barrier == pytest.approx(barrier)


def test_report_barrier_table_and_files(tmp_path):
    r = PathReport([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], [90.0, 50.0, 80.0], label="line")
    assert r.barrier == pytest.approx(1.5)
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


def test_interpolate_names_where_architectures_differ(pair):
    a, _, data = pair
    with pytest.raises(
        modeconn.ArchitectureMismatchError,
        match=r"differs from model_a at `conv1.weight`: shape \(4, 3, 3, 3\) vs \(8, 3, 3, 3\)",
    ):
        evaluate_line(a, modeconn.create_model("resnet20", width=8), 2, data)


def test_best_is_the_highest_accuracy_and_the_lowest_loss():
    report = PathReport(
        [0.0, 0.5, 1.0], [1.0, 0.4, 0.4], [80.0, 90.0, 90.0], extra={"robust_loss": [3.0, 2.0, 1.0]}
    )
    assert report.best() == (0.5, 90.0)  # the first on ties
    assert report.best("loss") == (0.5, 0.4)
    assert report.best("robust_loss") == (1.0, 1.0)
    nan = PathReport([0.0, 1.0], [float("nan"), 2.0], [float("nan"), 10.0])
    assert nan.best() == (1.0, 10.0) and nan.best("loss") == (1.0, 2.0)
    with pytest.raises(
        modeconn.errors.InvalidArgumentError, match="no metric 'nll'.*loss, accuracy, robust_loss"
    ):
        report.best("nll")
