"""Aligning and merging checkpoints from their files, tensor by tensor: the same permutations
and tensors as in memory, tied tensors saved once, and (issue 29) memory that does not hold
either model: measured in a subprocess, not timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import modeconn
from modeconn import AlignmentError, align_files, discover, merge_files, permute
from modeconn.tensor_files import LazyState, ShardWriter


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 3)
    ).eval()


def _save(model: nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return str(path)


def test_a_permuted_copy_comes_back_exactly_from_files(tmp_path):
    a = _net(0)
    spec = discover(a, torch.randn(2, 6))
    b = permute(a, spec, spec.random_permutation(1))
    result = align_files(
        spec, _save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors"), tmp_path / "out"
    )
    written = LazyState(result.path)
    assert sorted(written) == sorted(a.state_dict())
    assert all(torch.equal(written[k], v) for k, v in a.state_dict().items())
    assert result.notes == []


def test_checkpoints_sharded_differently_are_one_architecture(tmp_path):
    a = _net(0)
    spec = discover(a, torch.randn(2, 6))
    b = permute(a, spec, spec.random_permutation(2))
    with ShardWriter(tmp_path / "b", max_shard_bytes=300) as writer:  # B in shards, by size
        for name, t in reversed(b.state_dict().items()):
            writer.add(name, t)
    result = align_files(spec, _save(a, tmp_path / "a.safetensors"), tmp_path / "b", tmp_path / "out")
    written = LazyState(result.path)
    assert all(torch.equal(written[k], v) for k, v in a.state_dict().items())


def test_files_give_what_align_and_an_average_give_in_memory(tmp_path):
    a, b = _net(0), _net(1)
    spec = discover(a, torch.randn(2, 6))
    paths = _save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")
    in_memory = modeconn.align(a, b, cost="weight_matching", spec=spec)
    aligned = align_files(spec, *paths, tmp_path / "aligned", max_shard_bytes=512)
    assert all(torch.equal(in_memory.perms[g], aligned.perms[g]) for g in spec.groups)
    assert len(list(aligned.path.glob("*.safetensors"))) > 1  # written in shards
    written = LazyState(aligned.path)
    assert all(torch.equal(written[k], v) for k, v in in_memory.model.state_dict().items())
    merged = LazyState(merge_files(spec, *paths, tmp_path / "merged", weight=0.25).path)
    plain = LazyState(merge_files(spec, *paths, tmp_path / "plain", align=False).path)
    for k, va in a.state_dict().items():
        vb = in_memory.model.state_dict()[k]
        if va.is_floating_point():
            torch.testing.assert_close(merged[k], 0.75 * va + 0.25 * vb)
            torch.testing.assert_close(plain[k], (va + b.state_dict()[k]) / 2)
        else:
            assert torch.equal(merged[k], va)  # BatchNorm's step counter is A's


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.hidden = nn.Embedding(10, 8), nn.Linear(8, 12)
        self.back, self.out = nn.Linear(12, 8), nn.Linear(8, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        return self.out(h + self.back(torch.relu(self.hidden(h))))


def test_a_tied_tensor_saved_once_is_noted_and_the_rest_aligned(tmp_path):
    torch.manual_seed(0)
    a = _Tied().eval()
    spec = discover(a, torch.randint(0, 10, (2, 5)))
    b = permute(a, spec, spec.random_permutation(3))
    once = lambda m: {k: v for k, v in m.state_dict().items() if k != "out.weight"}  # noqa: E731
    save_file(once(a), tmp_path / "a.safetensors")
    save_file(once(b), tmp_path / "b.safetensors")
    result = align_files(spec, tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "out")
    written = LazyState(result.path)
    assert all(torch.equal(written[k], v) for k, v in once(a).items())
    assert "out.weight" in result.notes[0] and "tied tensors" in result.notes[0]


def test_mistakes_are_named(tmp_path):
    a, b = _net(0), _net(1)
    spec = discover(a, torch.randn(2, 6))
    pa, pb = _save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")
    with pytest.raises(AlignmentError, match="needs activations"):
        align_files(spec, pa, pb, tmp_path / "out", cost="correlation")
    with pytest.raises(AlignmentError, match=r"weight must be in \[0, 1\]"):
        merge_files(spec, pa, pb, tmp_path / "out", weight=1.5)
    other = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(modeconn.ArchitectureMismatchError):
        align_files(spec, pa, _save(other, tmp_path / "other.safetensors"), tmp_path / "out")
    renamed = {f"model.{k}": v for k, v in a.state_dict().items()}
    save_file(renamed, tmp_path / "ra.safetensors")
    save_file(renamed, tmp_path / "rb.safetensors")
    with pytest.raises(AlignmentError, match="names none of the tensors"):
        align_files(spec, tmp_path / "ra.safetensors", tmp_path / "rb.safetensors", tmp_path / "out")
    with pytest.raises(AlignmentError, match="cannot read the spec .*modeconn discover"):
        align_files(tmp_path / "spec.json", pa, pb, tmp_path / "out")
    (tmp_path / "notes.json").write_text('{"lr": 0.1}')
    with pytest.raises(AlignmentError, match="is not a saved PermutationSpec"):
        merge_files(tmp_path / "notes.json", pa, pb, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half written


def test_an_existing_output_is_refused_before_any_work(tmp_path):
    a, b = _net(0), _net(1)
    spec = discover(a, torch.randn(2, 6))
    pa, pb = _save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    for run in (align_files, merge_files):  # the cost's error would come first if it were solved first
        with pytest.raises(modeconn.CheckpointError, match="exists: give a new folder"):
            run(spec, pa, pb, tmp_path / "out", cost="correlation")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_a_spec_saved_as_json_is_read_from_its_path(tmp_path):
    a = _net(0)
    spec = discover(a, torch.randn(2, 6))
    b = permute(a, spec, spec.random_permutation(0))
    pa, pb = _save(a, tmp_path / "a.safetensors"), _save(b, tmp_path / "b.safetensors")
    (tmp_path / "spec.json").write_text(spec.to_json())
    result = align_files(tmp_path / "spec.json", pa, pb, tmp_path / "out")
    back = LazyState(result.path)
    assert all(torch.equal(back[k], v) for k, v in a.state_dict().items())


LIMIT = 0.45
"""Peak anonymous memory over the process's start, in W (both models' weight bytes): weight
matching's working set (0.3 W and some on these models: 0.34-0.37 W measured) and one shard
being written (one 9 MiB tensor here, 0.06 W); either model whole would be 0.5 W more. The
models' pages are the files' (mapped, not copied). Large allocations are mapped
(``MALLOC_MMAP_THRESHOLD_``) so that what is freed leaves the process and the peak is the
working set, not what the allocator kept."""

SCRIPT = r"""
import json, sys, threading, time
import torch
import modeconn
from modeconn.symmetry import PermutationSpec

torch.set_num_threads(1)
spec = PermutationSpec.from_json(open(sys.argv[1]).read())

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024

peak, done = [anon()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(anon())
        time.sleep(0.002)
before = anon()
threading.Thread(target=sample, daemon=True).start()
aligned = modeconn.align_files(spec, sys.argv[2], sys.argv[3], sys.argv[4], max_shard_bytes=8 << 20)
merged = modeconn.merge_files(spec, sys.argv[2], sys.argv[3], sys.argv[5], max_shard_bytes=8 << 20)
done.set()
moved = sum(not torch.equal(p, torch.arange(len(p))) for p in aligned.perms.values())
print(json.dumps({"before": before, "peak": max(peak), "moved": moved}))
"""


def test_files_are_aligned_and_merged_without_holding_either_model(tmp_path):
    def wide(seed: int) -> nn.Module:  # 8 convolutions 512 -> 512: 75 MB each model
        torch.manual_seed(seed)
        layers = [nn.Conv2d(3, 512, 3, padding=1), nn.ReLU()]
        for _ in range(8):
            layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))

    a = wide(0)
    spec = discover(a, torch.randn(2, 3, 4, 4))
    (tmp_path / "spec.json").write_text(spec.to_json())
    paths = [_save(a, tmp_path / "a.safetensors"), _save(wide(1), tmp_path / "b.safetensors")]
    weights = 2 * sum(t.numel() * t.element_size() for t in a.state_dict().values())
    del a
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "spec.json"),
            *paths,
            str(tmp_path / "al"),
            str(tmp_path / "me"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["moved"] == 9  # every hidden layer matched
    increase = m["peak"] - m["before"]
    assert increase <= LIMIT * weights, (
        f"peak anonymous memory rose by {increase / weights:.2f} W (W = {weights >> 20} MiB)"
    )
    assert len(LazyState(tmp_path / "me")) == 20
    print(f"peak anonymous memory: +{increase / weights:.2f} W (W = {weights >> 20} MiB)")
