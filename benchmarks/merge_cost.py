"""What merge and repair cost, against the passes they are made of, measured side by side.

Four random-init models of one architecture (BatchNorm statistics of the data, as trained
models have), 2,048 inputs in batches of 256, 2 threads, the spec discovered once outside the
timings. In one interleaved loop, ``--repeats`` times:

- ``align``: one ``modeconn.align(A, B, spec=spec)`` (correlation);
- ``forward``: one eval forward pass of one model over the data;
- ``star``: ``merge(..., method="star", repair=False)`` — target <= (N - 1) aligns
  (plus one BatchNorm recomputation when the model has BatchNorm);
- ``mean``: ``merge(..., method="mean", repair=False)`` — MergeMany measures each pair's
  statistics once: N(N-1)/2 paired passes after the star start; reported against
  (N - 1) + N(N-1)/2 aligns, with the iterations it took;
- ``repair``: ``repair(merged, stats, data)`` with the references measured beforehand
  (``ReferenceStatistics``) — target <= 1.5 forward passes;
- ``repair+refs``: the same measuring the N references too — against (1 + N) forward passes
  (2N + 1 with BatchNorm: references are measured after a BatchNorm reset).

Medians, and their ratios, are printed. Models: the registry's tinyten (BatchNorm) and a
BatchNorm-free VGG11 at width factor 0.5 on 32x32 inputs.

    python benchmarks/merge_cost.py               # about 5 minutes on 2 cores
    python benchmarks/merge_cost.py --repeats 5 --models vgg11
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import modeconn
from modeconn.batchnorm import has_batchnorm
from modeconn.merging import ReferenceStatistics, average_models, repair


def plain_vgg11(width: int = 32) -> nn.Module:
    """VGG11's layout without BatchNorm, widths halved and halved again (the registry's VGG has BatchNorm)."""
    layers: list[nn.Module] = []
    c = 3
    for v in (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v * width // 2, 3, padding=1), nn.ReLU()]
            c = v * width // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 10))


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return modeconn.create_model("tinyten") if name == "tinyten" else plain_vgg11()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["tinyten", "vgg11"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=4, help="models merged")
    p.add_argument("--samples", type=int, default=2048)
    args = p.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, 32, 32, generator=gen)
    data = [x[i : i + 256] for i in range(0, len(x), 256)]
    n = args.n
    print(
        f"{n} models, {args.samples} inputs (batch 256), median of {args.repeats}, torch {torch.__version__}"
    )
    for name in args.models:
        bench(name, n, x, data, args.repeats)


def bench(name: str, n: int, x: torch.Tensor, data: list[torch.Tensor], repeats: int) -> None:
    models = [modeconn.update_bn(build(name, s), data).eval() for s in range(n)]
    spec = modeconn.discover(models[0], x[:2])
    bn = has_batchnorm(models[0])
    times: dict[str, list[float]] = {}
    iterations = []

    def forward() -> None:
        with torch.no_grad():
            for b in data:
                models[0](b)

    for _ in range(repeats):
        times.setdefault("align", []).append(
            timed(lambda: modeconn.align(models[0], models[1], data, spec=spec))
        )
        times.setdefault("forward", []).append(timed(forward))
        times.setdefault("star", []).append(
            timed(lambda: modeconn.merge(models, data, method="star", spec=spec, repair=False))
        )
        start = time.perf_counter()
        result = modeconn.merge(models, data, method="mean", spec=spec, repair=False)
        times.setdefault("mean", []).append(time.perf_counter() - start)
        iterations.append(len(result.history) - 1)
        merged = average_models(result.aligned, [1 / n] * n)
        if bn:
            modeconn.update_bn(merged, data)
        stats = ReferenceStatistics.measure(result.aligned, data)
        start = time.perf_counter()
        repair(merged, stats, data)
        times.setdefault("repair", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        repair(merged, result.aligned, data)
        times.setdefault("repair+refs", []).append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, f = med["align"], med["forward"]
    pairs = n * (n - 1) // 2
    passes = (2 * n + 1) if bn else (n + 1)
    print(f"\n{name} ({'BatchNorm' if bn else 'no BatchNorm'}): align {a:.2f}s, forward {f:.3f}s")
    print(
        f"  star    {med['star']:7.2f}s  = {med['star'] / ((n - 1) * a):.2f} x (N-1) aligns  (target <= 1, + a BatchNorm pass)"
    )
    print(
        f"  mean    {med['mean']:7.2f}s  = {med['mean'] / ((n - 1 + pairs) * a):.2f} x (N-1 + N(N-1)/2) aligns"
        f"  ({statistics.median(iterations)} iterations)"
    )
    print(f"  repair  {med['repair']:7.3f}s  = {med['repair'] / f:.2f} x forward  (target <= 1.5)")
    print(
        f"  repair+refs {med['repair+refs']:7.3f}s = {med['repair+refs'] / (passes * f):.2f} x {passes} forwards"
    )


if __name__ == "__main__":
    main()
