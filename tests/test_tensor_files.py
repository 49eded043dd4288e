"""Checkpoints read tensor by tensor (one file, or shards with their index) and written in shards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from modeconn.errors import CheckpointError
from modeconn.tensor_files import INDEX, LazyState, ShardWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(8, 4, generator=g),
        "a.bias": torch.randn(8, generator=g),
        "b.weight": torch.randn(3, 8, generator=g).double(),
        "steps": torch.tensor(7),
    }


def _equal(state, expected: dict[str, torch.Tensor]) -> bool:
    return sorted(state) == sorted(expected) and all(torch.equal(state[k], v) for k, v in expected.items())


def test_a_shard_writer_splits_at_its_size_and_the_lazy_state_reads_every_layout(tmp_path):
    tensors = _tensors()
    with ShardWriter(tmp_path / "out", max_shard_bytes=100) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
    index = json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]
    assert (
        set(index) == set(tensors) and len(set(index.values())) == 4
    )  # 128, 32, 192 and 8 bytes: each alone
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".safetensors") == sorted(
        set(index.values())
    )
    state = LazyState(tmp_path / "out")
    assert _equal(state, tensors)
    assert state.shape("b.weight") == (3, 8) and "a.bias" in state and len(state) == 4
    save_file(tensors, tmp_path / "one.safetensors")  # one file, given as the file or its folder
    assert _equal(LazyState(tmp_path / "one.safetensors"), tensors)
    (tmp_path / "folder").mkdir()
    save_file(tensors, tmp_path / "folder" / "model.safetensors")
    assert _equal(LazyState(tmp_path / "folder"), tensors)


def test_nothing_is_left_at_the_path_when_writing_fails_and_a_path_is_never_overwritten(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with ShardWriter(tmp_path / "out", max_shard_bytes=10) as writer:
            writer.add("a", torch.ones(4))
            writer.add("b", torch.ones(4))  # the first shard is written
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="exists: give a new folder"):
        ShardWriter(tmp_path / "taken")


def test_what_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        LazyState(tmp_path / "nothing")
    (tmp_path / "two").mkdir()
    for name in ("x", "y"):
        save_file({"t": torch.ones(1)}, tmp_path / "two" / f"{name}.safetensors")
    with pytest.raises(CheckpointError, match=f"2 .safetensors files and no {INDEX}"):
        LazyState(tmp_path / "two")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="cannot read .* as safetensors"):
        LazyState(tmp_path / "bad.safetensors")
