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
    for name in ("paths.png", "paths.pdf", "plane.png", "plane.pdf"):
        assert (runs / "figure" / name).stat().st_size > 10_000, name
    assert read_config(runs / "figure")["plot"]["runs"] == [str(runs / "eval"), str(runs / "line")]
    for folder in ("a", "ab", "curve", "eval", "line", "figure"):
        assert json.loads((runs / folder / "state.json").read_text())["state"] == "complete", folder
    log = (runs / "a" / "log.txt").read_text().splitlines()
    assert [line.split("] ", 1)[1].split(":")[0] for line in log[:2]] == ["train epoch 1", "train epoch 2"]
    config = read_config(runs / "curve")
    assert (
        config["command"] == "fit" and config["fit"]["a"] == str(runs / "a") and config["fit"]["epochs"] == 2
    )
    align = json.loads((runs / "ab" / "results.json").read_text())
    assert align["correlation_after"] > align["correlation_before"]
    perms = json.loads((runs / "ab" / "perms.json").read_text())  # the output layer's axis apart
    assert (set(perms["hidden_units"]), set(perms["other_axes"])) == ({"net.1", "net.3"}, {"net.5"})
    assert align["groups"] == 2 and align["samples"] == 512


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
    # default labels say what each path is: the line and the curve join A to the aligned B
    assert (line["label"], curve["label"]) == ("aligned line", "aligned bezier curve (sgd)")


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


# -- run folders a user's mistakes cannot damage (issue 27) --------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        os.fspath(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_error(capsys, code: int) -> str:
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("modeconn: error: ")]
    assert len(errors) == 1 and not [x for x in lines if not x.startswith("modeconn: ")], lines
    return errors[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["align", "a", "b", "--out", "a"], "--out 'a' is the input run a"),
        (["align", "a", "b", "--out", "b/aligned"], "lies inside the input run b"),
        (["align", "a/model.safetensors", "b", "--out", "."], "--out '.' contains the input run a"),
        (["fit", "a", "ab", "--out", "ab"], "is the input run b"),
        (["evaluate", "curve", "--out", "curve"], "is the input run run"),
        (["evaluate", "--line", "a", "ab", "--out", "a"], "is the input run A"),
        (["train", "--model", "resnet20", "--out", "a"], "model 'mlp' -> 'resnet20'"),
        (["train", "--model", "mlp", *TINY, "--seed", "99", "--out", "a"], "seed 1 -> 99"),
        (
            ["align", "a", "b", "--cost", "weight_matching", "--out", "ab"],
            "cost 'correlation' -> 'weight_matching'",
        ),
        (["fit", "a", "ab", "--out", "a"], "is the input run a"),
        (["fit", "a", "ab", "--out", "eval"], "holds a `evaluate` run, not a `fit` run"),
        (
            ["evaluate", "--line", "a", "ab", "--num-points", "1", "--out", "x"],
            "num_points = 1 must be at least 2",
        ),
        (
            ["evaluate", "--line", "a", "ab", "--num-points", "0", "--out", "x"],
            "num_points = 0 must be at least 2",
        ),
        (["evaluate", "curve", "--test-samples", "-5", "--out", "x"], "test_samples = -5 must be at least 1"),
        (["evaluate", "--line", "a", "ab", "--data", "images", "--out", "x"], "unknown dataset 'images'"),
        (["train", "--model", "mlp", "--device", "gpu0", "--out", "x"], "device 'gpu0' is not a device"),
        (["fit", "--config", "a", "--out", "x"], "holds no [fit] table (it is the config of a `train` run)"),
        (
            ["fit", "a", "ab", "--option", "foo=1", "--out", "x"],
            "takes no option(s) foo; its options: aux_weight",
        ),
        (["models", "zzz*"], "no model matches 'zzz*'"),
        (["evaluate", "a/model.safetensors", "--out", "x"], "is a file, not a run folder"),
        (["plot", "a/model.safetensors", "--out", "x"], "holds no evaluation.json"),
        (["fit", "--config", "a/model.safetensors", "--out", "x"], "is a file, not a run folder"),
    ],
)
def test_a_mistake_is_one_line_and_changes_no_folder(runs, args, message, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    before = _snapshot(runs)
    code = main(args)
    line = _one_error(capsys, code if args[0] != "models" else 2 * code)
    assert message in line, line
    assert _snapshot(runs) == before, "a folder changed"
    assert not (runs / "x").exists()


def test_a_cuda_device_where_there_is_none_is_one_line(runs, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(runs)
    line = _one_error(capsys, main(["evaluate", "--line", "a", "ab", "--device", "cuda", "--out", "x"]))
    assert "there is no CUDA device here" in line and not (runs / "x").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "bogus = 1\n" + t, "unknown key(s) or table(s) bogus"),
        (lambda t: t.replace("[fit]", "[fitt]"), "unknown key(s) or table(s) fitt"),
        (
            lambda t: t.replace("epochs = 2", 'epochs = "two"'),
            "fit setting epochs = 'two' must be an integer",
        ),
        (lambda t: t.replace("lr = 0.05", 'lr = "fast"'), "fit setting lr = 'fast' must be a number"),
    ],
)
def test_a_broken_config_is_one_line(runs, tmp_path, edit, message, monkeypatch, capsys):
    config = tmp_path / "config.toml"
    config.write_text(edit((runs / "curve" / "config.toml").read_text()))
    monkeypatch.chdir(runs)
    assert message in _one_error(capsys, main(["fit", "--config", os.fspath(config), "--out", "x"]))
    assert not (runs / "x").exists()


def test_restart_keeps_the_old_run_aside(runs, tmp_path, monkeypatch, capsys):
    import shutil

    shutil.copytree(runs / "a", tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--seed", "5", "--quiet"]
    assert main([*args, "--out", "a", "--restart"]) == 0
    assert read_config(tmp_path / "a")["train"]["seed"] == 5
    assert read_config(tmp_path / "a.restart-1")["train"]["seed"] == 1  # the old run, whole
    assert _snapshot(tmp_path / "a.restart-1") == _snapshot(runs / "a")
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "restarted: the previous contents are kept in" in log and "train epoch 1:" in log
    assert json.loads((tmp_path / "a" / "state.json").read_text())["state"] == "complete"


def test_an_unfinished_fit_is_evaluated_with_a_warning_and_its_epoch_recorded(
    runs, tmp_path, monkeypatch, capsys
):
    import shutil

    shutil.copytree(runs / "curve", tmp_path / "curve")
    state = json.loads((tmp_path / "curve" / "state.json").read_text())
    state.update(state="running", pid=2**22 + 17, epoch=2, epochs=5)  # a fit killed with -9
    (tmp_path / "curve" / "state.json").write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    points = ["--num-points", "2", "--test-samples", "50", "--bn-samples", "50", "--quiet"]
    assert main(["evaluate", "curve", *points, "--out", "e"]) == 0
    err = capsys.readouterr().err
    assert (
        f"modeconn: warning: '{tmp_path / 'curve'}' is interrupted after epoch 2 of 5: "
        "evaluating its curve as of epoch 2" in err
    )
    meta = json.loads((tmp_path / "e" / "evaluation.json").read_text())["meta"]
    assert (meta["run_state"], meta["curve_epoch"]) == ("interrupted", 2)


def test_non_finite_weights_are_one_line(runs, tmp_path, monkeypatch, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(runs / "ab", tmp_path / "nan")
    weights = load_file(tmp_path / "nan" / "aligned.safetensors")
    next(iter(weights.values()))[0] = float("nan")
    save_file(weights, tmp_path / "nan" / "aligned.safetensors")
    monkeypatch.chdir(tmp_path)
    line = _one_error(capsys, main(["evaluate", "--line", os.fspath(runs / "a"), "nan", "--out", "e"]))
    assert f"model B ('{tmp_path / 'nan'}') has non-finite weights (NaN or inf in" in line
    assert not (tmp_path / "e").exists()


def test_the_dataset_travels_with_the_runs(runs, tmp_path, monkeypatch, capsys):
    """Runs on an ImageFolder: align, fit and evaluate take it from their input runs; digits
    models on it, or runs of two datasets together, are one error each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for label in ("cat", "dog", "emu"):
            (tmp_path / "pics" / split / label).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "pics" / split / label / f"{i}.png"
                )
    monkeypatch.chdir(tmp_path)
    tiny = ["--model", "mlp", "--data", "pics", "--epochs", "1", "--batch-size", "4", "--quiet"]
    assert main(["train", *tiny, "--seed", "1", "--out", "p1"]) == 0
    assert main(["train", *tiny, "--seed", "2", "--out", "p2"]) == 0
    assert (
        main(["align", "p1", "p2", "--num-samples", "12", "--batch-size", "4", "--out", "p12", "--quiet"])
        == 0
    )
    assert read_config(tmp_path / "p12")["align"]["data"] == "pics"
    line = ["--num-points", "2", "--bn-samples", "12", "--quiet"]
    assert main(["evaluate", "--line", "p1", "p12", *line, "--out", "pe"]) == 0
    assert json.loads((tmp_path / "pe" / "evaluation.json").read_text())["meta"]["data"] == "pics"
    capsys.readouterr()
    a = os.fspath(runs / "a")
    assert "were made on different data (A on digits, B on pics)" in _one_error(
        capsys, main(["evaluate", "--line", a, "p12", *line, "--out", "x"])
    )
    assert "is made for 10 classes but pics has 3: pass the --data it was trained on" in _one_error(
        capsys, main(["evaluate", "--line", a, os.fspath(runs / "ab"), "--data", "pics", *line, "--out", "x"])
    )


def test_plot_keeps_its_suffix_and_takes_labels(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    out = tmp_path / "fig.svg"
    assert main(["plot", "eval", "line", "--out", os.fspath(out), "--label", "line=straight", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["figures"] == [
        os.fspath(out),
        os.fspath(tmp_path / "fig-plane.svg"),
    ]
    assert "straight" in out.read_text() and "aligned line" not in out.read_text()  # svg text is searchable
    assert "is not one of the runs plotted" in _one_error(
        capsys, main(["plot", "eval", "--out", os.fspath(tmp_path / "g.png"), "--label", "nowhere=x"])
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["align", "a", "b", "--out", "a"], "--out 'a' is the input run a"),
        (["train", "--model", "resnet2O", "--out", "t"], "unknown model 'resnet2O'. Did you mean: resnet"),
        (["align", "a", "vgg1l", "--out", "ab2"], "unknown model 'vgg1l'. Did you mean: vgg1"),
        (["evaluate", "--line", "a", "nosuch/b", "--out", "l"], "no such file or folder: 'nosuch/b'"),
        (["fit", "a", "b.safetensors", "--out", "f2"], "no such file or folder: 'b.safetensors'"),
    ],
)
def test_a_mistake_is_reported_before_torch_is_imported(runs, args, message):
    """Checks of arguments, paths, configs and model names come first: the error in a fraction
    of a second, not after torch, timm and the data have loaded."""
    code = (
        "import sys; from modeconn.cli import main; "
        f"code = main({args!r}); "
        "assert code == 2 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=runs, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("modeconn: error: " + message), done.stderr


def test_a_misspelt_timm_name_is_an_unknown_model_not_a_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_error(capsys, main(["train", "--model", "timm/resnet1B", "--out", "x"]))
    assert line.startswith("modeconn: error: unknown model 'timm/resnet1B'. Did you mean: timm/resnet18")
    assert not (tmp_path / "x").exists()


def test_an_empty_imagefolder_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty" / "cat").mkdir(parents=True)  # a class folder with no images
    monkeypatch.chdir(tmp_path)
    line = _one_error(capsys, main(["train", "--model", "mlp", "--data", "empty", "--out", "x"]))
    assert "--data 'empty' is not an ImageFolder tree: " in line and not (tmp_path / "x").exists()


def test_a_folder_from_before_a_setting_existed_still_resumes(runs, tmp_path, monkeypatch, capsys):
    """A setting a folder does not record counts as its default, not as a difference."""
    import shutil

    shutil.copytree(runs / "a", tmp_path / "a")
    config = tmp_path / "a" / "config.toml"
    config.write_text("\n".join(x for x in config.read_text().splitlines() if not x.startswith("verify")))
    assert "verify" not in read_config(tmp_path / "a")["train"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "mlp", *TINY, "--seed", "1", "--out", "a", "--quiet"]) == 0
    assert main(["train", "--model", "mlp", *TINY, "--seed", "9", "--out", "a", "--quiet"]) == 2
    assert "seed 1 -> 9" in capsys.readouterr().err


def test_a_step_keeps_the_callers_global_rng_and_its_seed_decides_the_results(tmp_path):
    """A step seeds torch's global generator from its ``seed`` for its own work only: the
    caller's generator is as it was, and one seed gives the same results twice."""
    import torch

    import modeconn as package
    from modeconn import workflow

    def train(seed: int, out: str) -> tuple[dict, dict]:
        config = {"model": "mlp", "epochs": 1, "batch_size": 64, "seed": seed}
        config.update(train_samples=128, test_samples=64)
        before = torch.get_rng_state()
        results = workflow.train(config, tmp_path / out, quiet=True)
        assert torch.equal(torch.get_rng_state(), before)  # not reseeded, and nothing drawn from it
        model = package.create_model("mlp", num_classes=10, in_chans=1)
        package.load_checkpoint(model, tmp_path / out / "model.safetensors")
        return results, model.state_dict()

    torch.manual_seed(1234)
    first, weights = train(3, "first")
    second, again = train(3, "second")
    _, different = train(4, "other")
    assert first["test_loss"] == second["test_loss"]
    assert first["history"][0]["loss"] == second["history"][0]["loss"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert not all(torch.equal(weights[k], different[k]) for k in weights)  # the seed is used


BN_NET = """
import torch.nn as nn


def net():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
"""


def test_a_curves_end_measures_as_its_lines_end(tmp_path, monkeypatch):
    """A BatchNorm model measured at the end of a curve and at the end of the line through the
    same end points gives the same numbers, though the paths have other numbers of points:
    BatchNorm statistics are recomputed on each image's same augmented draw at every t."""
    (tmp_path / "bnnet.py").write_text(BN_NET)
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    monkeypatch.chdir(tmp_path)
    small = ["--train-samples", "256", "--epochs", "1", "--batch-size", "64", "--quiet"]
    for name, seed in (("a", "1"), ("b", "2")):
        assert main(["train", "--model", "bnnet:net", *small, "--seed", seed, "--out", name]) == 0
    assert main(["fit", "a", "b", *small, "--out", "f"]) == 0
    points = ["--test-samples", "200", "--bn-samples", "256", "--quiet"]
    assert main(["evaluate", "f", "--num-points", "3", *points, "--out", "ec"]) == 0
    assert main(["evaluate", "--line", "a", "b", "--num-points", "2", *points, "--out", "el"]) == 0
    curve, line = (json.loads((tmp_path / e / "evaluation.json").read_text()) for e in ("ec", "el"))
    assert curve["t"] == [0.0, 0.5, 1.0] and line["t"] == [0.0, 1.0]
    for end in (0, -1):
        for key in ("loss", "accuracy"):
            assert curve[key][end] == line[key][end], (end, key, curve[key], line[key])


def test_sync_bn_on_cpu_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_error(capsys, main(["train", "--model", "mlp", "--sync-bn", "--device", "cpu", "--out", "x"]))
    assert "--sync-bn needs CUDA or XPU devices, not cpu" in line and not (tmp_path / "x").exists()
