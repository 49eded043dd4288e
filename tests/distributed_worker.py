"""The work ``tests/test_distributed.py`` runs twice — as one process (``python this.py``) and
as two ranks (``torchrun --nproc-per-node 2 this.py``) — and compares.

    python distributed_worker.py OUT [--tasks align,bn,train,fit,pam,pgd] [--kill-at EPOCH:BATCH]

``--tasks sync_bn`` (not in the default tasks) trains a BatchNorm convnet with ``sync_bn`` on
the GPU (on CPU, two ranks record the error that says it needs one).

Each rank writes ``OUT/<task>-rank<r>.pt`` (tensors, numbers and lists: read back with
``weights_only=True``), and ``OUT/writes-rank<r>.txt`` lists the checkpoints it wrote.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn

import modeconn
import modeconn.training.loop as loop
from modeconn.attacks import PGD
from modeconn.training import Callback, CurveOptimizer

TASKS = ("align", "bn", "train", "fit", "pam", "pgd")


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """96 images of 3×8×8 in [0, 1] and labels of 4 classes: 6 batches of 16."""
    gen = torch.Generator().manual_seed(7)
    return torch.rand(96, 3, 8, 8, generator=gen), torch.randint(0, 4, (96,), generator=gen)


def convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 4))


class Recording(CurveOptimizer):
    """The ``sgd`` optimizer, recording the t of every step in ``Recording.ts``."""

    ts: list[float] = []

    def sample_t(self) -> float:
        t = super().sample_t()
        Recording.ts.append(t)
        return t


class Kill(Callback):
    """Ends this process abruptly (no cleanup) at ``epoch``, after ``batch`` batches, on rank 1
    (or the only rank): torchrun then stops the other ranks, as when a machine goes down."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, state) -> None:
        strategy = modeconn.distributed.current()
        if (state.epoch, state.batch) == (
            self.epoch,
            self.batch,
        ) and strategy.rank == strategy.world_size - 1:
            os._exit(17)


def unlike_other_ranks() -> None:
    """Seed torch's global generator differently on every rank (rank 0 as one process): what
    must agree across ranks has to come from rank 0, not from seeds that happen to match."""
    torch.manual_seed(1000 + modeconn.distributed.current().rank)


def run(out: Path, tasks: list[str], kill: tuple[int, int] | None, cpu: bool = False) -> None:
    strategy = modeconn.distributed.current()
    rank = strategy.rank
    writes = out / f"writes-rank{rank}.txt"
    save = loop.save_checkpoint

    def recorded_save(module, path, **state):
        with open(writes, "a") as f:
            f.write(f"{path}\n")
        return save(module, path, **state)

    loop.save_checkpoint = recorded_save  # to see which ranks write checkpoints
    x, y = data()
    results: dict[str, dict] = {}
    torch.manual_seed(0)
    if "align" in tasks:
        a, b = convnet(1), convnet(2)
        found = modeconn.align(a, b, x, batch_size=16)
        stats = modeconn.collect_statistics(a, b, x, found.spec, batch_size=16)
        results["align"] = {
            "perms": found.perms,
            "stats": {
                g: {f: getattr(s[0], f) for f in ("n", "mean_a", "mean_b", "var_a", "var_b", "cov")}
                for g, s in stats.items()
            },
        }
    if "bn" in tasks:
        given, split = convnet(3), convnet(3)
        modeconn.update_bn(given, list(x.split(16))[rank :: strategy.world_size])  # this rank's batches
        modeconn.update_bn(split, x, batch_size=16)  # a tensor: split here
        results["bn"] = {
            "given_shards": {k: v for k, v in given.state_dict().items() if "running" in k},
            "split_here": {k: v for k, v in split.state_dict().items() if "running" in k},
        }
    if "train" in tasks:
        model = mlp(4)
        unlike_other_ranks()
        history = modeconn.train_model(model, (x, y), epochs=2, lr=0.05, batch_size=16, progress=False)
        results["train"] = {"state": model.state_dict(), "losses": [r.loss for r in history]}
    if "fit" in tasks:
        curve = modeconn.Curve(mlp(5), mlp(6))
        callbacks = [Kill(*kill)] if kill else []
        unlike_other_ranks()
        history = modeconn.fit_curve(
            curve, (x, y), optimizer=Recording, epochs=3, lr=0.05, batch_size=16,
            checkpoint=out / "fit.pt", callbacks=callbacks, progress=False,
        )  # fmt: skip
        results["fit"] = {
            "bends": curve.bends.detach().clone(),
            "epochs": [r.epoch for r in history],
            "ts": Recording.ts,
        }
    if "pam" in tasks:
        a, spec = mlp(8), modeconn.discover(mlp(8), x[:2])
        curve = modeconn.Curve(a, modeconn.permute(a, spec, spec.random_permutation(3)))
        unlike_other_ranks()
        history = modeconn.fit_curve(
            curve, (x, y), optimizer="pam", epochs=2, perm_epochs=1, curve_epochs=1, candidates=4,
            score_batches=2, lr=0.05, batch_size=16, progress=False,
        )  # fmt: skip
        log = history.summary["log"][0]
        results["pam"] = {
            "perms": history.summary["perms"],
            "bends": curve.bends.detach().clone(),
            "log": [log["distance_from_ds"], log["objective_relaxed"], log["objective_rounded"]],
        }
    if "pgd" in tasks:
        curve = modeconn.Curve(convnet(9), convnet(10))
        unlike_other_ranks()
        modeconn.fit_curve(
            curve, (x, y), optimizer="pgd", attack=PGD(eps=0.05, alpha=0.02, steps=2), epochs=1, lr=0.05,
            batch_size=16, progress=False,
        )  # fmt: skip
        results["pgd"] = {"bends": curve.bends.detach().clone()}
    if "sync_bn" in tasks:
        device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
        model = convnet(11)
        unlike_other_ranks()
        try:
            history = modeconn.train_model(
                model, (x, y), epochs=2, lr=0.05, batch_size=16, sync_bn=True, device=device, progress=False
            )
        except modeconn.errors.InvalidArgumentError as e:
            results["sync_bn"] = {"error": str(e)}
        else:
            results["sync_bn"] = {
                "state": {k: v.cpu() for k, v in model.state_dict().items()},
                "losses": [r.loss for r in history],
                "classes": sorted({type(m).__name__ for m in model.modules()}),
            }
    for task, result in results.items():
        torch.save(result, out / f"{task}-rank{rank}.pt")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--kill-at", default=None, help="EPOCH:BATCH")
    p.add_argument("--cpu", action="store_true", help="sync_bn on CPU even where there is a GPU")
    args = p.parse_args()
    torch.set_num_threads(1)
    kill = tuple(int(v) for v in args.kill_at.split(":")) if args.kill_at else None
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.out, args.tasks.split(","), kill, cpu=args.cpu)


if __name__ == "__main__":
    main()
