"""What the step benchmarks share: their command line and the timing of training steps."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from modeconn.training import Trainer


def parser(description: str, *, rounds: int, steps: int) -> argparse.ArgumentParser:
    """The options every step benchmark takes: architecture, batch, rounds, steps, threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--steps", type=int, default=steps, help="steps per round and kind")
    p.add_argument("--threads", type=int, default=2)
    return p


def timed_steps(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    """Wall time of each of ``steps`` consecutive ``trainer.training_step(x, y)`` calls."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.training_step(x, y)
        times.append(time.perf_counter() - t0)
    return times


def interleaved(
    kinds: dict[str, Trainer],
    x: torch.Tensor,
    y: torch.Tensor,
    rounds: int,
    steps: int,
    on_round: Callable[[int, dict[str, float]], None],
) -> dict[str, float]:
    """Time ``steps`` steps of every kind per round, the order reversed every other round
    (ABBA: no kind always runs first, so load on the machine hits all alike); ``on_round`` gets
    each round's number and per-kind medians. Returns every kind's median over all rounds."""
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        medians = {}
        for k in order:
            t = timed_steps(kinds[k], x, y, steps)
            times[k] += t
            medians[k] = statistics.median(t)
        on_round(r + 1, medians)
    return {k: statistics.median(v) for k, v in times.items()}
