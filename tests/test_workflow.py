"""The workflow through the real ``modeconn`` entry point, in subprocesses, on the embedded
digits at tiny size: train two end points, align, fit, evaluate (a curve and a line), plot;
rerun from a saved config and get the same numbers; resume; and user errors in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeconn import errors as modeconn_errors
from modeconn.cli import main
from modeconn.runs import read_config


def modeconn(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "modeconn.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"modeconn {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


TINY = ("--epochs", "2", "--lr", "0.05", "--batch-size", "64")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """train A and B -> align -> fit -> evaluate the curve and the aligned line -> plot."""
    root = tmp_path_factory.mktemp("workflow")
    for name, seed in (("a", "1"), ("b", "2")):
        modeconn("train", "--model", "mlp", *TINY, "--seed", seed, "--out", name, "--quiet", cwd=root)
    modeconn("align", "a", "b", "--num-samples", "512", "--out", "ab", "--quiet", cwd=root)
    modeconn("fit", "a", "ab", *TINY, "--out", "curve", "--quiet", cwd=root)
    points = ["--num-points", "5", "--test-samples", "400"]
    modeconn("evaluate", "curve", *points, "--plane", "4", "--out", "eval", "--quiet", cwd=root)
    modeconn("evaluate", "--line", "a", "ab", *points, "--out", "line", cwd=root)
    modeconn("plot", "eval", "line", "--out", "figure", cwd=root)
    return root


def test_every_step_writes_its_run_folder(runs):
    for folder, files in {
        "a": ["config.toml", "model.safetensors", "checkpoint.pt", "results.json", "results.csv", "log.txt"],
        "ab": [
            "config.toml",
            "aligned.safetensors",
            "perms.json",
            "results.json",
            "correlation_signature.png",
        ],
        "curve": ["config.toml", "curve.pt", "results.json", "results.csv"],
        "eval": ["config.toml", "evaluation.json", "evaluation.csv", "path.png", "plane.json", "plane.png"],
    }.items():
        for name in files:
            assert (runs / folder / name).is_file(), f"{folder}/{name}"
    for name in ("figure.png", "figure.pdf", "figure-plane.png", "figure-plane.pdf"):
        assert (runs / name).stat().st_size > 10_000, name
    config = read_config(runs / "curve")
    assert (
        config["command"] == "fit" and config["fit"]["a"] == str(runs / "a") and config["fit"]["epochs"] == 2
    )
    align = json.loads((runs / "ab" / "results.json").read_text())
    assert align["correlation_after"] > align["correlation_before"]


def test_the_plane_holds_the_control_points_and_the_curve(runs):
    plane = json.loads((runs / "eval" / "plane.json").read_text())
    assert len(plane["x"]) == len(plane["y"]) == 4 and len(plane["accuracy"]) == 4
    assert plane["points"]["A"] == [0.0, 0.0] and plane["points"]["B"][1] == pytest.approx(0.0, abs=1e-9)
    (x0, y0), (x1, y1) = plane["curve"][0], plane["curve"][-1]
    assert (x0, y0) == pytest.approx((0.0, 0.0), abs=1e-9) and (x1, y1) == pytest.approx(plane["points"]["B"])
    assert min(plane["x"]) < 0 < plane["points"]["B"][0] < max(plane["x"])  # the margins


def test_the_aligned_line_joins_the_end_points(runs):
    line = json.loads((runs / "line" / "evaluation.json").read_text())
    curve = json.loads((runs / "eval" / "evaluation.json").read_text())
    a = json.loads((runs / "a" / "results.json").read_text())
    assert line["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # both paths start at A (t = 0); the curve's ends are A and the aligned B
    assert line["accuracy"][0] == curve["accuracy"][0] and line["accuracy"][-1] == curve["accuracy"][-1]
    assert line["meta"]["data"] == "digits" and a["test_accuracy"] > 50


def test_a_rerun_from_the_saved_config_gives_the_same_numbers(runs):
    modeconn("fit", "--config", "curve/config.toml", "--out", "again", "--quiet", cwd=runs)
    first = json.loads((runs / "curve" / "results.json").read_text())["history"]
    again = json.loads((runs / "again" / "results.json").read_text())["history"]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]
    # a flag overrides the file
    modeconn("fit", "--config", "curve", "--epochs", "1", "--out", "shorter", "--quiet", cwd=runs)
    assert len(json.loads((runs / "shorter" / "results.json").read_text())["history"]) == 1


def test_a_run_resumes_from_its_folder_and_says_what_changed(runs):
    modeconn("fit", "--config", "curve", "--epochs", "1", "--out", "resumed", "--quiet", cwd=runs)
    done = modeconn("fit", "--config", "curve", "--epochs", "2", "--lr", "0.02", "--out", "resumed", cwd=runs)
    history = json.loads((runs / "resumed" / "results.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2] and [r["lr"] for r in history] == [0.05, 0.02]
    assert "resuming from" in done.stdout
    warning = [line for line in done.stderr.splitlines() if line.startswith("modeconn: warning:")]
    assert len(warning) == 1 and "lr 0.05 -> 0.02" in warning[0]


def test_json_output_is_the_results_alone(runs):
    done = modeconn("plot", "eval", "--out", "alone.png", "--json", cwd=runs)
    assert json.loads(done.stdout) == {"figures": ["alone.png", "alone-plane.png"], "paths": 1, "planes": 1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet33", "--out", "x"], "Did you mean: resnet32"),
        (["train", "--model", "mlp"], "train needs --out FOLDER"),
        (["train", "--model", "mlp", "--data", "cifar10", "--out", "x"], "needs --data-root"),
        (["align", "nowhere/a.pt", "b", "--out", "x"], "no such file or folder: 'nowhere/a.pt'"),
        (["fit", "a", "b", "--schedule", "linear", "--out", "x"], "unknown schedule 'linear'"),
        (["fit", "a", "b", "--option", "perm_epochs", "--out", "x"], "--option takes key=value"),
        (["evaluate", "a", "--out", "x"], "is not a `modeconn fit` run folder"),
        (["plot", "a", "--out", "x.png"], "holds no evaluation.json"),
        (["fit", "--config", "nowhere", "--out", "x"], "no config at 'nowhere'"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(runs, args, message, monkeypatch, capsys):
    monkeypatch.chdir(runs)  # in process: the same entry point as the console script, without the start-up
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modeconn: error: ") and message in lines[0], lines


def test_the_console_script_reports_a_user_error_in_one_line(runs):
    done = modeconn("align", "a", "nowhere.safetensors", "--out", "x", cwd=runs, check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "modeconn: error: no such file or folder: 'nowhere.safetensors'"
    ]


def test_an_imagefolder_dataset_and_a_plugin_option(runs, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "images" / split / label / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--model",
        "mlp",
        "--data",
        "images",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        "img",
    ]
    assert main([*args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["history"]) == 1
    model = read_config(tmp_path / "img")["model"]
    assert (model["arch"], model["num_classes"], model["in_chans"]) == ("mlp", 2, 3)

    monkeypatch.chdir(runs)
    options = ["--option", "perm_epochs=1", "--option", "candidates=2", "--option", "score_batches=1"]
    assert (
        main(["fit", "a", "ab", "--optimizer", "pam", *options, "--epochs", "2", "--out", "pam", "--quiet"])
        == 0
    )
    assert read_config(runs / "pam")["fit"]["options"] == {
        "perm_epochs": 1,
        "candidates": 2,
        "score_batches": 1,
    }
    assert set(json.loads((runs / "pam" / "results.json").read_text())["perms"]) == {
        "net.1",
        "net.3",
        "net.5",
    }


def test_a_model_by_callable():
    from modeconn.resolve import build_model, model_spec

    model = build_model(model_spec("torchvision.models:resnet18"))
    assert type(model).__name__ == "ResNet" and not model.training
    with pytest.raises(modeconn_errors.InvalidArgumentError, match="cannot import 'nosuch.module:fn'"):
        build_model(model_spec("nosuch.module:fn"))
