"""Two ranks under torchrun (DDP, gloo, 1 thread each) against one process with 2 threads, on
the same data in the same run: epoch time of ``fit_curve`` and wall time of ``align``, ResNet32.

Rounds alternate the two launches, the order reversed every other round (ABBA). Each launch
(a fresh process or torchrun job) builds the same two ResNet32s and a one-bend Bezier curve,
fits it for ``--epochs`` epochs on ``--images`` CIFAR-10 training images (synthetic images when
../shared/data is absent; global batch 128: 64 per rank), keeps the epoch times after the first
(warm-up), then times ``--aligns`` calls of ``align(A, B, images)`` after one warm-up call.
Printed: medians per kind and the ratio two ranks / one process (target <= 1.15: on one
machine with two cores communication is the only overhead to see).

    python benchmarks/ddp_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    import torch
    from align_speed import load_images

    import modeconn

    torch.set_num_threads(args.threads)
    strategy = modeconn.distributed.current()
    images, source = load_images()
    x = torch.from_numpy(images[: args.images]).float().div_(255)
    y = torch.randint(0, 10, (args.images,), generator=torch.Generator().manual_seed(0))
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(modeconn.create_model("resnet32", num_classes=10))
    curve = modeconn.Curve(*models)
    history = modeconn.fit_curve(curve, (x, y), epochs=args.epochs, batch_size=128, progress=False)
    align_times = []
    for _ in range(args.aligns + 1):
        strategy.barrier()
        t0 = time.perf_counter()
        modeconn.align(models[0], models[1], x, batch_size=256)
        align_times.append(time.perf_counter() - t0)
    if strategy.is_main:
        result = {"epoch": [r.seconds for r in history][1:], "align": align_times[1:], "source": source}
        print("RESULT " + json.dumps(result), flush=True)


def launch(kind: str, args: argparse.Namespace) -> dict:
    common = [
        str(Path(__file__).resolve()), "--child", "--images", str(args.images),
        "--epochs", str(args.epochs), "--aligns", str(args.aligns),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if kind == "one":
        command = [sys.executable, *common, "--threads", "2"]
        env["OMP_NUM_THREADS"] = "2"
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        command += [*common, "--threads", "1"]
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{kind} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=3, help="per launch; the first is warm-up")
    p.add_argument("--aligns", type=int, default=2, help="timed align calls per launch (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds: 2 launches of each kind per round")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    times: dict[str, dict[str, list[float]]] = {k: {"epoch": [], "align": []} for k in ("one", "two")}
    for r in range(args.rounds):
        for kind in ("one", "two", "two", "one") if r % 2 == 0 else ("two", "one", "one", "two"):
            result = launch(kind, args)
            for what in ("epoch", "align"):
                times[kind][what] += result[what]
            print(
                f"round {r + 1} {kind:>3}: epochs {', '.join(f'{t:.2f}' for t in result['epoch'])} s; "
                f"align {', '.join(f'{t:.2f}' for t in result['align'])} s",
                flush=True,
            )
    print(
        f"\nResNet32, {args.images} images ({result['source']}), global batch 128, torch {_torch_version()}"
    )
    for what, label in (("epoch", "fit_curve epoch"), ("align", "align")):
        one, two = (statistics.median(times[k][what]) for k in ("one", "two"))
        print(
            f"{label:>16}: 1 process x 2 threads {one:.2f} s, 2 ranks x 1 thread {two:.2f} s, "
            f"ratio {two / one:.3f} (target <= 1.15; n = {len(times['one'][what])} + {len(times['two'][what])})"
        )


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
