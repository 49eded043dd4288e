"""Under ``torchrun`` (2 ranks, gloo on CPU) modeconn computes what one process computes.

``distributed_worker.py`` runs the same work as one process and as two ranks launched by the
real ``torchrun`` in a subprocess; the results are compared here: alignment (permutations
identical, statistics equal to float64 round-off), BatchNorm recomputation, end-point training
of a BatchNorm-free model (weights equal to float32 round-off), curve fitting (the same t on
every rank at every step), pam and pgd (every rank ends with the same curve), and a 2-rank run
killed mid-epoch that resumes from the checkpoint only rank 0 wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import modeconn
from modeconn import distributed

WORKER = Path(__file__).with_name("distributed_worker.py")

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


def _launch(out: Path, *args: str, ranks: int | None = 2, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    command = [sys.executable, str(WORKER), str(out), *args]
    if ranks is not None:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        )
    return done


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The worker's results as one process and as two ranks."""
    root = tmp_path_factory.mktemp("distributed")
    _launch(root / "one", ranks=None)
    _launch(root / "two")
    return root / "one", root / "two"


def _both_ranks(two: Path, task: str) -> tuple[dict, dict]:
    return _load(two / f"{task}-rank0.pt"), _load(two / f"{task}-rank1.pt")


def test_align_on_two_shards_finds_the_permutations_of_one_process(runs):
    one, two = runs
    single = _load(one / "align-rank0.pt")
    for rank in _both_ranks(two, "align"):
        assert rank["perms"].keys() == single["perms"].keys()
        for g, p in single["perms"].items():
            assert torch.equal(rank["perms"][g], p), g
        for g, fields in single["stats"].items():
            assert rank["stats"][g]["n"] == fields["n"] == 96 * 8 * 8  # every pixel of all 96 images
            for f in ("mean_a", "mean_b", "var_a", "var_b", "cov"):
                want, got = fields[f], rank["stats"][g][f]
                assert got.dtype == torch.float64
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{g}.{f}")


@pytest.mark.parametrize("form", ["given_shards", "split_here"])
def test_batchnorm_recomputed_on_two_shards_equals_one_process(runs, form):
    one, two = runs
    single = _load(one / "bn-rank0.pt")[form]
    for rank in _both_ranks(two, "bn"):
        for k, v in single.items():
            # each running statistic is a float32 mean over the same six batches, summed in another order
            torch.testing.assert_close(rank[form][k], v, rtol=1e-6, atol=1e-6, msg=k)


def test_training_on_two_ranks_gives_the_weights_of_one_process(runs):
    one, two = runs
    single = _load(one / "train-rank0.pt")
    for rank in _both_ranks(two, "train"):
        for k, v in single["state"].items():
            torch.testing.assert_close(rank["state"][k], v, rtol=0, atol=1e-6, msg=k)  # 12 SGD steps
        # the epoch figures are over all ranks, not rank 0's half
        assert rank["losses"] == pytest.approx(single["losses"], rel=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs two GPUs for two NCCL ranks")
def test_training_with_sync_bn_on_two_gpus_gives_the_batchnorm_weights_of_one_process(tmp_path):
    """With sync_bn, each rank's BatchNorm normalizes with the statistics of both ranks' halves
    of the batch: the weights and running statistics are one process's, up to float error."""
    _launch(tmp_path / "one", "--tasks", "sync_bn", ranks=None)
    _launch(tmp_path / "two", "--tasks", "sync_bn")
    single = _load(tmp_path / "one" / "sync_bn-rank0.pt")
    for rank in _both_ranks(tmp_path / "two", "sync_bn"):
        assert rank["classes"] == single["classes"] and "SyncBatchNorm" not in rank["classes"]  # put back
        for k, v in single["state"].items():
            torch.testing.assert_close(rank["state"][k], v, rtol=1e-5, atol=1e-5, msg=k)
        assert rank["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_sync_bn_on_cpu_ranks_is_an_error_that_says_why(tmp_path):
    """SyncBatchNorm synchronizes GPU tensors only: two CPU ranks get modeconn's error, not
    PyTorch's ValueError from inside the first forward."""
    _launch(tmp_path, "--tasks", "sync_bn", "--cpu")
    for rank in _both_ranks(tmp_path, "sync_bn"):
        assert rank["error"].startswith("sync_bn needs the model on CUDA or XPU devices (it is on cpu)")


def test_fit_curve_draws_the_same_t_on_every_rank(runs):
    one, two = runs
    rank0, rank1 = _both_ranks(two, "fit")
    assert len(rank0["ts"]) == 3 * 6  # three epochs of six global batches
    assert rank0["ts"] == rank1["ts"] == _load(one / "fit-rank0.pt")["ts"]
    assert torch.equal(rank0["bends"], rank1["bends"])
    torch.testing.assert_close(rank0["bends"], _load(one / "fit-rank0.pt")["bends"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("task", ["pam", "pgd"])
def test_pam_and_pgd_end_with_the_same_curve_on_every_rank(runs, task):
    _, two = runs
    rank0, rank1 = _both_ranks(two, task)
    assert torch.equal(rank0["bends"], rank1["bends"])
    for g, p in rank0.get("perms", {}).items():
        assert torch.equal(p, rank1["perms"][g])
    # pam: the relaxed matrices agree too (their distance from the doubly stochastic set, and
    # the objective before and after rounding)
    assert rank0.get("log") == rank1.get("log")


def test_only_rank_0_writes_checkpoints(runs):
    _, two = runs
    assert (two / "writes-rank0.txt").read_text().splitlines() == [str(two / "fit.pt")] * 3
    assert not (two / "writes-rank1.txt").exists()


def test_a_killed_two_rank_run_resumes_from_its_checkpoint(runs, tmp_path):
    _, two = runs
    uninterrupted = _load(two / "fit-rank0.pt")
    for resume_ranks in (2, None):  # on the same number of ranks, and on one process
        out = tmp_path / f"resume-{resume_ranks}"
        killed = _launch(out, "--tasks", "fit", "--kill-at", "2:2", check=False)
        assert killed.returncode != 0
        assert not (out / "fit-rank0.pt").exists()
        assert _load(out / "fit.pt")["epoch"] == 1  # the last finished epoch
        _launch(out, "--tasks", "fit", ranks=resume_ranks)
        resumed = _load(out / "fit-rank0.pt")
        assert resumed["epochs"] == [1, 2, 3]
        assert resumed["ts"] == uninterrupted["ts"][6:]  # epochs 2 and 3 at the t of the uninterrupted run
        torch.testing.assert_close(resumed["bends"], uninterrupted["bends"], rtol=0, atol=1e-6)


def _torchrun_script(script: Path) -> subprocess.CompletedProcess:
    """``script`` run on 2 ranks by torchrun in its folder; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
        env=env, capture_output=True, text=True, timeout=300, cwd=script.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_the_scaling_tutorial_prints_the_same_under_torchrun(tmp_path):
    """docs/scaling.md says its script runs unchanged under torchrun: run it there."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    code, expected = re.findall(r"```(?:python|output)\n(.*?)```", page, flags=re.S)[:2]
    script = tmp_path / "train_pair.py"
    script.write_text(code)
    done = _torchrun_script(script)
    want = expected.replace("Local()", "Distributed(rank=0, world_size=2, backend='gloo')")
    assert done.stdout.strip().splitlines() == want.strip().splitlines()


def test_one_process_is_the_local_strategy():
    strategy = distributed.current()
    assert isinstance(strategy, distributed.Local) and strategy.world_size == 1 and strategy.is_main
    model = torch.nn.Linear(2, 2)
    assert strategy.wrap(model) is model
    assert strategy.broadcast({"a": 1}) == {"a": 1} and strategy.gather(3) == [3]
    assert strategy.device("cpu") == torch.device("cpu") and strategy.where() == ""


def test_torchrun_detection_needs_its_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.under_torchrun()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert not distributed.under_torchrun()  # torchrun --nproc-per-node 1 is one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.under_torchrun()
    with distributed.local():
        assert isinstance(distributed.current(), distributed.Local)


def test_asking_for_the_strategy_under_torchrun_opens_no_process_group(monkeypatch):
    """current() and what only reads it (rank, world size, device, splitting the data) open no
    process group: that is left to the first collective or DDP wrap."""
    from modeconn.data.batches import batches

    def refuse(*args, **kwargs):
        raise AssertionError("a process group was opened")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    monkeypatch.setattr(distributed, "_chosen", None)
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    for k, v in {**torchrun, "MASTER_PORT": "29511"}.items():
        monkeypatch.setenv(k, v)
    strategy = distributed.current()
    assert isinstance(strategy, distributed.Distributed) and distributed.current() is strategy
    assert (strategy.rank, strategy.world_size, strategy.local_rank) == (1, 2, 1)
    assert not strategy.is_main and strategy.where() == " on rank 1 of 2"
    assert strategy.device("cpu") == torch.device("cpu")
    x, y = torch.arange(16.0).unsqueeze(1), torch.zeros(16, dtype=torch.long)
    shard = [batch.x.flatten().tolist() for batch in batches((x, y), batch_size=4, shard=True)]
    assert shard == [[4.0, 5.0, 6.0, 7.0], [12.0, 13.0, 14.0, 15.0]]  # rank 1's whole batches
    assert not dist.is_initialized()


def test_the_global_batch_must_split_evenly_between_ranks(monkeypatch):
    from modeconn.data.batches import batches

    class Two(distributed.Local):
        world_size = 2

    monkeypatch.setattr(distributed, "current", lambda: Two())
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(modeconn.DataError, match="divisible by the 2 ranks"):
        batches((x, y), batch_size=5, shuffle=True, shard=True)


def test_the_command_line_runs_under_torchrun(tmp_path):
    """`torchrun --no-python modeconn train ...` (the documented form): every rank trains, rank 0
    alone writes and speaks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).with_name("modeconn")  # the console script of this environment
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [
        "--no-python",
        os.fspath(script),
        "train",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        "run",
        "--quiet",
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlp on digits: test accuracy"), done.stdout
    log = [line.split("] ", 1)[1] for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert len(log) == 2 and log[0].startswith("train epoch 1:") and log[1] == lines[0]  # rank 0's alone
    model = modeconn.create_model("mlp", num_classes=10, in_chans=1)
    modeconn.load_checkpoint(model, tmp_path / "run" / "model.safetensors")


def test_the_process_group_modeconn_opened_is_closed_before_teardown(tmp_path):
    """A gloo group left to interpreter teardown can abort a rank (SIGABRT, "terminate called
    without an active exception"): the group :func:`distributed.current` opened is destroyed at
    exit, while the interpreter is whole. A handler registered first runs last and sees it gone."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import atexit, torch.distributed as dist\n"
        "atexit.register(lambda: print('closed' if not dist.is_initialized() else 'open', flush=True))\n"
        "from modeconn import distributed\n"
        "distributed.current().barrier()\n"
    )
    done = _torchrun_script(script)
    assert done.stdout.count("closed") == 2 and "open" not in done.stdout, done.stdout  # ranks interleave
