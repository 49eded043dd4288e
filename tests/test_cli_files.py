"""``modeconn align-files`` and ``modeconn merge-files``: checkpoints aligned and merged from
their safetensors files through the CLI's entry point, and the mistakes users make, each one
line (exit code 2) that writes nothing."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from modeconn import discover, permute
from modeconn.cli import main
from modeconn.tensor_files import LazyState


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


@pytest.fixture
def files(tmp_path):
    """spec.json, a.safetensors and b.safetensors (B a permuted copy of A), and A's state."""
    a = _net(0)
    spec = discover(a, torch.randn(2, 6))
    b = permute(a, spec, spec.random_permutation(0))
    (tmp_path / "spec.json").write_text(spec.to_json())
    save_file(a.state_dict(), tmp_path / "a.safetensors")
    save_file(b.state_dict(), tmp_path / "b.safetensors")
    return tmp_path, a.state_dict()


def _args(tmp_path, *more: str) -> list[str]:
    return [
        str(tmp_path / "spec.json"),
        str(tmp_path / "a.safetensors"),
        str(tmp_path / "b.safetensors"),
        *more,
    ]


def test_align_files_gives_back_a_from_a_permuted_copy(files, capsys):
    tmp_path, state_a = files
    assert main(["align-files", *_args(tmp_path, "--out", str(tmp_path / "aligned"))]) == 0
    assert "groups of B's units moved" in capsys.readouterr().out
    back = LazyState(tmp_path / "aligned")
    assert all(torch.equal(back[k], v) for k, v in state_a.items())


def test_merge_files_of_a_and_its_permuted_copy_is_a_and_reports_json(files, capsys):
    tmp_path, state_a = files
    code = main(
        ["merge-files", *_args(tmp_path, "--out", str(tmp_path / "m"), "--shard-size", "1KB", "--json")]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(tmp_path / "m") and report["groups_moved"] > 0
    merged = LazyState(tmp_path / "m")
    assert len(list((tmp_path / "m").glob("*.safetensors"))) > 1  # sharded at 1 KB
    assert all(torch.allclose(merged[k], v) for k, v in state_a.items())


def test_the_plain_average_leaves_b_as_it_is(files):
    tmp_path, state_a = files
    assert (
        main(["merge-files", *_args(tmp_path, "--out", str(tmp_path / "m"), "--no-align", "--weight", "1")])
        == 0
    )
    merged, b = LazyState(tmp_path / "m"), LazyState(tmp_path / "b.safetensors")
    assert all(torch.equal(merged[k], b[k]) for k in state_a)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: ["align-files", str(p / "nope.json"), *_args(p)[1:]], "cannot read the spec"),
        (
            lambda p: ["align-files", str(p / "a.safetensors"), *_args(p)[1:]],
            "is not a saved PermutationSpec",
        ),
        (lambda p: ["align-files", *_args(p)[:1], str(p / "spec.json"), *_args(p)[2:]], "as safetensors"),
        (lambda p: ["merge-files", *_args(p), "--weight", "2"], r"weight must be in \[0, 1\]"),
        (lambda p: ["align-files", *_args(p), "--cost", "correlation"], "needs activations"),
        (lambda p: ["align-files", *_args(p), "--cost", "weightmatching"], "Did you mean 'weight_matching'"),
        (
            lambda p: ["align-files", *_args(p), "--shard-size", "2 parsecs"],
            "--shard-size takes a positive size",
        ),
        (lambda p: ["align-files", *_args(p), "--shard-size", "0"], "--shard-size takes a positive size"),
    ],
)
def test_mistakes_are_one_line_and_write_nothing(files, capsys, change, message):
    tmp_path, _ = files
    argv = [*change(tmp_path), "--out", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modeconn: error: ") and "\n" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_existing_output_folder_is_refused(files, capsys):
    tmp_path, _ = files
    (tmp_path / "out").mkdir()
    assert main(["align-files", *_args(tmp_path, "--out", str(tmp_path / "out"))]) == 2
    assert "exists: give a new folder" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())
