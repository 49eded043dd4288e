"""What the step benchmarks share: their command line and the timing of training steps."""

from __future__ import annotations

import argparse
import time

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
