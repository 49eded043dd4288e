"""``modeconn merge`` and ``modeconn export`` (issue 28), in process through the CLI's entry
point, on the embedded digits at tiny size: three TinyTens (BatchNorm) merged, the merge
evaluated and exported; a point of a fitted curve exported at t = 0.5 and at the best t of its
evaluation, and reloaded; and the mistakes users make, each one line that changes no folder.

A file of its own (not tests/test_cli.py): its module fixture trains the runs it reads."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modeconn.cli import main
from modeconn.runs import read_config

TINY = ("--epochs", "1", "--lr", "0.05", "--batch-size", "64", "--train-samples", "256")
TEST = ("--test-samples", "100")


def _run(*args: str) -> None:
    code = main([*args, "--quiet"])
    assert code == 0, args


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three tiny TinyTen runs, their merge, B aligned to A, a curve, its evaluation; an MLP run;
    copies of runs that say what users' folders say (another dataset, a fit still running, a
    fit never evaluated, one evaluated twice)."""
    root = tmp_path_factory.mktemp("merge")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for seed in ("1", "2", "3"):
            _run("train", "--model", "tinyten", *TINY, *TEST, "--seed", seed, "--out", f"t{seed}")
        _run("train", "--model", "mlp", "--epochs", "0", "--out", "mlp")
        small = ("--num-samples", "128", "--bn-samples", "128", *TEST)
        _run(
            "merge",
            "t1",
            "t2",
            "t3",
            *small,
            "--weights",
            "2,1,1",
            "--max-iterations",
            "2",
            "--out",
            "merged",
        )
        _run("align", "t1", "t2", "--num-samples", "128", "--out", "ab")
        _run("fit", "t1", "ab", *TINY, "--out", "curve")
        _run("evaluate", "curve", "--num-points", "3", "--bn-samples", "128", *TEST, "--out", "eval")
        _run(
            "evaluate",
            "--line",
            "t1",
            "ab",
            "--num-points",
            "2",
            "--bn-samples",
            "128",
            *TEST,
            "--out",
            "line",
        )
    finally:
        os.chdir(cwd)
    other = root / "elsewhere" / "t3"  # the same architecture, made on another dataset
    shutil.copytree(root / "t3", other)
    config = other / "config.toml"
    config.write_text(config.read_text().replace('data = "digits"', 'data = "cifar10"\ndata_root = "/data"'))
    shutil.copytree(root / "curve", root / "lonely" / "curve")  # no evaluation beside it
    shutil.copytree(root / "curve", root / "busy" / "curve")  # a fit still being written
    state = json.loads((root / "busy" / "curve" / "state.json").read_text())
    state.update(state="running", pid=os.getpid(), host=socket.gethostname(), epoch=1, epochs=5)
    (root / "busy" / "curve" / "state.json").write_text(json.dumps(state))
    for name in ("curve", "eval", "eval2"):  # a curve evaluated in two folders
        shutil.copytree(root / ("eval" if name == "eval2" else name), root / "twice" / name)
        config = root / "twice" / name / "config.toml"
        config.write_text(config.read_text().replace(str(root / "curve"), str(root / "twice" / "curve")))
    (root / "taken.safetensors").write_bytes(b"an earlier file")
    return root


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


def _state(folder: Path) -> str:
    return json.loads((folder / "state.json").read_text())["state"]


def _tinyten():
    import modeconn

    return modeconn.create_model("tinyten", num_classes=10, in_chans=1)


def _test_batch():
    import torch

    from modeconn.data import digits

    test = digits(train=False)
    return torch.stack([test[i][0] for i in range(64)])


# -- merge ------------------------------------------------------------------------------------


def test_merge_writes_a_run_folder_with_what_it_did(runs):
    folder = runs / "merged"
    for name in ("config.toml", "merged.safetensors", "perms.json", "results.json", "log.txt"):
        assert (folder / name).is_file(), name
    assert _state(folder) == "complete"
    config = read_config(folder)
    assert config["command"] == "merge" and config["model"]["weights"] == "merged.safetensors"
    assert config["merge"]["runs"] == [str(runs / f"t{i}") for i in (1, 2, 3)]
    assert (config["merge"]["data"], config["merge"]["weights"]) == ("digits", [2.0, 1.0, 1.0])
    results = json.loads((folder / "results.json").read_text())
    assert [x["weight"] for x in results["inputs"]] == [0.5, 0.25, 0.25]  # normalized, with a note
    assert [x["run"] for x in results["inputs"]] == config["merge"]["runs"]
    assert any("normalized" in note for note in results["notes"])
    assert (results["method"], results["cost"], results["repaired"]) == ("mean", "correlation", True)
    assert [h["iteration"] for h in results["history"]][:2] == [0, 1] and len(results["history"]) <= 3
    assert results["test_samples"] == 100 and 0 <= results["test_accuracy"] <= 100
    for key in ("unaligned_average", "aligned_average"):
        assert set(results["baselines"][key]) == {"test_loss", "test_accuracy"}
    assert "merged 3 tinyten runs (mean, correlation, REPAIR) on digits: test accuracy" in results["summary"]
    perms = json.loads((folder / "perms.json").read_text())
    assert len(perms) == 3 and all(sorted(p) == list(range(len(p))) for p in perms[1].values())


def test_a_merge_folder_is_a_model_evaluate_and_a_line_read(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    assert main(["evaluate", "merged", *TEST, "--out", os.fspath(tmp_path / "e"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    merged = json.loads((runs / "merged" / "results.json").read_text())
    # the same model on the same test samples: the numbers the merge recorded
    assert evaluated["test_accuracy"] == merged["test_accuracy"]
    assert evaluated["test_loss"] == pytest.approx(merged["test_loss"], rel=1e-6)
    assert evaluated["summary"].startswith("merged model (tinyten on digits): test accuracy")
    assert _state(tmp_path / "e") == "complete"
    line = ["--num-points", "2", "--bn-samples", "64", *TEST, "--out", os.fspath(tmp_path / "l"), "--quiet"]
    assert main(["evaluate", "--line", "merged", "t1", *line]) == 0
    report = json.loads((tmp_path / "l" / "evaluation.json").read_text())
    assert report["t"] == [0.0, 1.0] and report["meta"]["a"] == str(runs / "merged")


def test_the_merge_of_two_by_star_without_repair(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(runs)
    args = ["merge", "t1", "t2", "--method", "star", "--cost", "weight_matching", "--repair", "no"]
    assert main([*args, "--bn-samples", "64", *TEST, "--out", os.fspath(tmp_path / "m"), "--quiet"]) == 0
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert (results["method"], results["cost"], results["repaired"]) == ("star", "weight_matching", False)
    assert [x["weight"] for x in results["inputs"]] == [0.5, 0.5] and len(results["history"]) == 1
    assert "(star, weight_matching) on digits" in results["summary"]


def test_the_methods_the_cli_checks_are_merges(runs):
    from modeconn.merging import METHODS
    from modeconn.workflow.settings import _CHOICES

    assert _CHOICES["method"] == METHODS


# -- export -----------------------------------------------------------------------------------


def test_export_of_a_merge_reloads_as_the_same_model(runs, tmp_path, monkeypatch, capsys):
    import torch

    import modeconn

    monkeypatch.chdir(runs)
    out = tmp_path / "exports" / "merged.safetensors"
    assert main(["export", "merged", "--out", os.fspath(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["summary"] == f"exported the model of the merge run {runs / 'merged'} -> {out}"
    card = json.loads((tmp_path / "exports" / "merged.json").read_text())
    assert card["model"] == {
        "arch": "tinyten",
        "num_classes": 10,
        "in_chans": 1,
        "weights": "merged.safetensors",
    }
    assert (card["format"], card["command"], card["run"]) == (
        "modeconn-export/1",
        "merge",
        str(runs / "merged"),
    )
    model, saved = _tinyten(), _tinyten()
    modeconn.load_checkpoint(model, out)
    modeconn.load_checkpoint(saved, runs / "merged" / "merged.safetensors")
    x = _test_batch()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), saved.eval()(x))
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "merged.json",
        "merged.safetensors",
    ]  # no leftovers


def _curve_and_bn(runs: Path):
    """The curve of ``runs/curve`` as a user rebuilds it with the public API, and the BatchNorm
    data ``evaluate`` (and ``export``, by default) recompute statistics on."""
    import torch

    import modeconn
    from modeconn.data import FixedDraws, alignment_subset, digits

    a, b = _tinyten(), _tinyten()
    modeconn.load_checkpoint(a, runs / "t1" / "model.safetensors")
    modeconn.load_checkpoint(b, runs / "ab" / "aligned.safetensors")
    curve = modeconn.Curve(a, b, family="bezier", num_bends=1)
    modeconn.load_checkpoint(curve, runs / "curve" / "curve.pt")
    train = digits(train=True)

    def bn(n: int):
        subset = FixedDraws(alignment_subset(train, num_samples=min(n, len(train)), seed=0))
        return torch.utils.data.DataLoader(subset, batch_size=256)

    return curve, bn


def test_export_of_a_point_of_a_curve_is_model_at_with_batchnorm_recomputed(runs, tmp_path, monkeypatch):
    import torch

    import modeconn

    monkeypatch.chdir(runs)
    out = tmp_path / "mid.safetensors"
    assert main(["export", "curve", "--t", "0.5", "--out", os.fspath(out), "--quiet"]) == 0
    card = json.loads((tmp_path / "mid.json").read_text())
    assert (card["t"], card["bn_recomputed"], card["bn_samples"], card["curve_epoch"]) == (0.5, True, 1438, 1)
    assert card["fit_run"] == str(runs / "curve") and "evaluated" not in card  # t = 0.5 was not evaluated
    curve, bn = _curve_and_bn(runs)
    expected = curve.model_at(0.5, bn_data=bn(2048))
    model = _tinyten()
    modeconn.load_checkpoint(model, out)
    x = _test_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected(x), rtol=1e-5, atol=1e-5)
        stale = curve.model_at(0.5)  # the interpolated statistics: another model
        assert not torch.allclose(stale(x), expected(x), atol=1e-3)


@pytest.mark.parametrize("source", ["eval", "curve"])
def test_export_best_is_the_point_the_evaluation_measured_best(runs, tmp_path, monkeypatch, source):
    """From the evaluate folder, or from the fit run (its one evaluation beside it): the t of
    PathReport.best, BatchNorm recomputed on as many samples as the evaluation's."""
    import torch

    import modeconn

    monkeypatch.chdir(runs)
    out = tmp_path / "best.safetensors"
    assert main(["export", source, "--t", "best", "--out", os.fspath(out), "--quiet"]) == 0
    report = modeconn.PathReport.from_dict(json.loads((runs / "eval" / "evaluation.json").read_text()))
    t, accuracy = report.best("accuracy")
    card = json.loads((tmp_path / "best.json").read_text())
    assert (card["t"], card["t_requested"], card["bn_samples"]) == (t, "best", 128)
    assert card["evaluated"]["accuracy"] == accuracy and card["evaluated"]["evaluation"] == str(runs / "eval")
    assert card["evaluated"]["loss"] == report.loss[report.t.index(t)]
    model = _tinyten()
    modeconn.load_checkpoint(model, out)
    curve, bn = _curve_and_bn(runs)
    expected = curve.model_at(t, bn_data=bn(128))
    x = _test_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected(x), rtol=1e-5, atol=1e-5)


def test_force_replaces_an_earlier_export_and_nothing_else(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    out = tmp_path / "m.safetensors"
    assert main(["export", "t1", "--out", os.fspath(out), "--quiet"]) == 0
    first = out.read_bytes()
    line = _one_error(capsys, main(["export", "t2", "--out", os.fspath(out)]))
    assert f"--out '{out}' exists: pass --force to replace it" in line and out.read_bytes() == first
    assert main(["export", "t2", "--out", os.fspath(out), "--force", "--quiet"]) == 0
    assert out.read_bytes() != first
    assert json.loads((tmp_path / "m.json").read_text())["run"] == str(runs / "t2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


HF_MODULE = """
def tiny():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
    )
    return BertForSequenceClassification(config).eval()
"""


def test_a_hugging_face_model_is_exported_with_save_pretrained(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForSequenceClassification

    from modeconn.runs import RunFolder
    from modeconn.training import save_checkpoint

    (tmp_path / "hf_tiny_export.py").write_text(HF_MODULE)
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    import hf_tiny_export

    model = hf_tiny_export.tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights the callable alone does not give
    run = RunFolder(tmp_path / "hf")  # a run folder as `modeconn train --model hf_tiny_export:tiny` leaves
    run.write_config(
        {"command": "train", "model": {"arch": "hf_tiny_export:tiny", "weights": "model.safetensors"}}
    )
    save_checkpoint(model, tmp_path / "hf" / "model.safetensors")
    run.set_state("complete")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path / "hf")
    line = _one_error(capsys, main(["export", "hf", "--out", "bert.safetensors"]))
    assert "Hugging Face BertForSequenceClassification: --out names the folder save_pretrained writes" in line
    assert main(["export", "hf", "--out", "bert", "--quiet"]) == 0
    card = json.loads((tmp_path / "bert" / "modeconn.json").read_text())
    assert card["model"] == {"arch": "hf_tiny_export:tiny", "hugging_face": "BertForSequenceClassification"}
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
    capsys.readouterr()  # from_pretrained's progress
    assert "exists: pass --force" in _one_error(capsys, main(["export", "hf", "--out", "bert"]))
    assert main(["export", "hf", "--out", "bert", "--force", "--quiet"]) == 0
    assert (tmp_path / "bert" / "modeconn.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert "is not an earlier export" in _one_error(
        capsys, main(["export", "hf", "--out", "mine", "--force"])
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and _snapshot(tmp_path / "hf") == before


# -- the mistakes users make: one line, no folder changed ---------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["merge", "--out", "x"], "merge needs the models to merge: modeconn merge RUN_A RUN_B"),
        (["merge", "t1", "--out", "x"], "merge needs at least two runs, got one ("),
        (
            ["merge", "t1", "t2", "mlp", "--out", "x"],
            "the runs are of different architectures (#1 and #2 are tinyten, #3 is mlp): merge needs models "
            "of one architecture",
        ),
        (
            ["merge", "t1", "t2", "elsewhere/t3", "--out", "x"],
            "the runs were made on different data (#1 on digits, #2 on digits, #3 on cifar10 (/data))",
        ),
        (
            ["merge", "t1", "t2", "--weights=-1,2", "--out", "x"],
            "merge weights must be >= 0, got [-1.0, 2.0]",
        ),
        (["merge", "t1", "t2", "--weights", "1,nan", "--out", "x"], "merge weights must be finite numbers"),
        (["merge", "t1", "t2", "--weights", "0,0", "--out", "x"], "merge weights must not all be 0"),
        (
            ["merge", "t1", "t2", "t3", "--weights", "1,1", "--out", "x"],
            "2 weight(s) for 3 runs: give one weight",
        ),
        (["merge", "t1", "t2", "--weights", "a,b", "--out", "x"], "--weights takes one number per run"),
        (["merge", "t1", "t2", "--out", "t2"], "--out 't2' is the input run #2"),
        (["merge", "t1", "t2", "--out", "t1/merged"], "--out 't1/merged' lies inside the input run #1"),
        (
            ["merge", "t1", "t2", "--method", "median", "--out", "x"],
            "method = 'median' must be one of mean, star",
        ),
        (["merge", "t1", "t2", "--cost", "cosine", "--out", "x"], "no cost plugin named 'cosine'"),
        (
            ["merge", "t1", "t2", "--repair", "maybe", "--out", "x"],
            "repair = 'maybe' must be one of auto, yes, no",
        ),
        (["merge", "t1", "t2", "--reference", "2", "--out", "x"], "there are 2 runs, numbered 0 to 1"),
        (["merge", "t1", "curve", "--out", "x"], "is a `fit` run, which holds no model (export a point of"),
        (["merge", "t1", "nowhere", "--out", "x"], "run #2 ('nowhere'): no such file or folder"),
        (["merge", "t1", "t2", "--out", "merged"], "holds a merge run with other settings"),
        (["evaluate", "merged", "--plane", "3", "--out", "x"], "--plane needs a curve"),
        (["export", "lonely/curve", "--t", "best", "--out", "x.safetensors"], "was never evaluated"),
        (["export", "lonely/curve", "--t", "best", "--out", "x.safetensors"], "run `modeconn evaluate"),
        (["export", "twice/curve", "--t", "best", "--out", "x.safetensors"], "was evaluated in 2 folders"),
        (["export", "curve", "--t", "1.5", "--out", "x.safetensors"], "--t takes best or a number from 0"),
        (["export", "curve", "--t", "-0.1", "--out", "x.safetensors"], "got '-0.1'"),
        (["export", "curve", "--t", "nan", "--out", "x.safetensors"], "got 'nan'"),
        (["export", "curve", "--t", "middle", "--out", "x.safetensors"], "got 'middle'"),
        (["export", "curve", "--out", "x.safetensors"], "holds a curve: pass --t"),
        (
            ["export", "t1", "--t", "0.5", "--out", "x.safetensors"],
            "is a `train` run: its one model is exported",
        ),
        (["export", "t1", "--out", "taken.safetensors"], "--out 'taken.safetensors' exists: pass --force"),
        (["export", "busy/curve", "--t", "0.5", "--out", "x.safetensors"], "is still being written (running"),
        (["export", "t1", "--out", "t2/model.safetensors"], "lies inside the run folder"),
        (["export", "t1", "--out", "t1/copy.safetensors"], "lies inside the run folder"),
        (["export", "t1", "--out", "t2"], "--out 't2' is a run folder"),
        (["export", "line", "--t", "0.5", "--out", "x.safetensors"], "evaluates a straight line"),
        (["export", "t1", "--out", "x"], "exported as a .safetensors file"),
        (["export", "t1/model.safetensors", "--out", "x.safetensors"], "is a file, not a run folder"),
        (["export", "--out", "x.safetensors"], "export needs a run folder"),
        (["export", "t1"], "export needs --out PATH"),
    ],
)
def test_a_mistake_is_one_line_and_changes_no_folder(runs, args, message, monkeypatch, capsys):
    monkeypatch.chdir(runs)
    before = _snapshot(runs)
    line = _one_error(capsys, main(args))
    assert message in line, line
    assert _snapshot(runs) == before, "a folder changed"
    assert not (runs / "x").exists() and not (runs / "x.safetensors").exists()


def test_a_merge_mistake_is_reported_before_torch_is_imported(runs):
    code = (
        "import sys; from modeconn.cli import main; "
        "code = main(['merge', 't1', 't2', 'mlp', '--out', 'x']); "
        "assert code == 2 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]; "
        "code = main(['export', 'curve', '--t', '2', '--out', 'x.safetensors']); "
        "assert code == 2 and 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=runs, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("modeconn: error: the runs are of different architectures")
