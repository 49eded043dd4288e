import copy
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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


def test_a_line_joined_from_its_halves_is_the_line(pair):
    a, b, data = pair
    middle = copy.deepcopy(a)
    middle.load_state_dict(modeconn.state.lerp_state(a.state_dict(), b.state_dict(), 0.5))
    whole = evaluate_line(a, b, 5, data, label="whole")
    joined = PathReport.join([evaluate_line(a, middle, 3, data), evaluate_line(middle, b, 3, data)], "joined")
    assert joined.t == pytest.approx(whole.t)
    assert joined.loss == pytest.approx(whole.loss, rel=1e-4)
    assert joined.accuracy == pytest.approx(whole.accuracy)
    assert joined.barrier == pytest.approx(whole.barrier, rel=1e-3, abs=1e-5)


@given(st.lists(st.lists(st.floats(0, 10, allow_nan=False), min_size=2, max_size=6), min_size=1, max_size=4))
def test_joined_pieces_keep_each_joint_once_and_measure_the_barrier_against_the_whole_chord(losses):
    pieces = []
    for k, loss in enumerate(losses):
        t = [i / (len(loss) - 1) for i in range(len(loss))]
        if k:  # each piece starts where the one before ended
            loss = [pieces[-1].loss[-1], *loss[1:]]
        pieces.append(PathReport(t, loss, [50.0] * len(loss), extra={"robust": list(loss)}))
    joined = PathReport.join(pieces)
    assert len(joined.t) == sum(len(p.t) for p in pieces) - (len(pieces) - 1)
    assert joined.t[0] == 0.0 and joined.t[-1] == pytest.approx(1.0)
    assert all(u < v for u, v in zip(joined.t, joined.t[1:]))
    assert joined.extra["robust"] == joined.loss
    first, last = joined.loss[0], joined.loss[-1]
    expected = max(x - (first + (last - first) * t) for t, x in zip(joined.t, joined.loss))
    assert math.isclose(joined.barrier, expected, rel_tol=1e-9, abs_tol=1e-9)
