"""Weight matching's objective Σ⟨θ_A, Pθ_B⟩ and time, against its peer, on independently
initialised pairs (issue 29, "weight matching as good as the best peer").

For each model pair (seeds 0 and 1, random init, eval mode), ``REPEATS`` interleaved rounds
of: modeconn before (``match_weights`` as of ``--before``, loaded from git), modeconn now
(``align(a, b, cost="weight_matching")``) and ``rebasin`` 0.0.47's
``PermutationCoordinateDescent`` when it is importable — each end to end, models in, aligned
model out (modeconn's ``discover``, rebasin's tracing included). The objective is summed in
float64 over every parameter, the same way for all three (BatchNorm running statistics are
buffers, left out: rebasin does not permute them). ``kept`` is the largest change of the
aligned model's outputs on random inputs against B's (a permutation keeps the function).

Models: a 3×512 MLP (784 inputs, 10 outputs), the registry's VGG11-BN at ``--vgg-width``
(default 0.5: 2.4M parameters) and ResNet20 (width 16, 0.27M).

rebasin is not a dependency: ``--install-rebasin`` puts it (with torchview and graphviz, no
other dependency: it would replace torch) under ``--rebasin-dir``, which is added to the path;
without it, rebasin is skipped with a message when it cannot be imported.

    python benchmarks/weight_matching_quality.py                      # modeconn before/now
    python benchmarks/weight_matching_quality.py --install-rebasin    # and rebasin 0.0.47
    python benchmarks/weight_matching_quality.py mlp --repeats 5      # some models
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import modeconn.plugins.costs as cost_plugins
import torch
import torch.nn as nn
from modeconn.registry.mlp import MLP
from modeconn.registry.vgg_cifar import CifarVGG

import modeconn

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "c044d63"
"""The last commit before weight matching's greedy start and memory-lean layout."""
REBASIN = "rebasin==0.0.47"
REPEATS = 3


def _models(vgg_width: float) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    return {
        "mlp_3x512": (lambda: MLP(in_chans=1, img_size=28, hidden=(512, 512, 512)), (1, 28, 28)),
        "vgg11": (lambda: CifarVGG(11, width_factor=vgg_width), (3, 32, 32)),
        "resnet20": (lambda: modeconn.create_model("resnet20"), (3, 32, 32)),
    }


def objective(a: nn.Module, b: nn.Module) -> float:
    """Σ ⟨θ_A, θ_B⟩ over every parameter, in float64."""
    pb = dict(b.named_parameters())
    with torch.no_grad():
        return sum(
            float(torch.dot(p.double().flatten(), pb[k].double().flatten())) for k, p in a.named_parameters()
        )


def _load_before(rev: str) -> types.ModuleType | None:
    """``modeconn/alignment/weight_matching.py`` as of ``rev``, as a module of its own."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:modeconn/alignment/weight_matching.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"before: cannot read weight_matching.py at {rev} ({e}); skipped")
        return None
    module = types.ModuleType("weight_matching_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:weight_matching.py", "exec"), module.__dict__)
    return module


@contextmanager
def _match_weights(fn: Callable | None):
    """``cost="weight_matching"`` solved by ``fn`` (None: as installed)."""
    saved = cost_plugins.match_weights
    if fn is not None:
        cost_plugins.match_weights = fn
    try:
        yield
    finally:
        cost_plugins.match_weights = saved


def _rebasin(directory: Path, install: bool):
    if install:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(directory), REBASIN]
            + ["torchview==0.2.7", "graphviz==0.21"],
            check=True,
        )
    if directory.is_dir() and str(directory) not in sys.path:
        sys.path.append(str(directory))
    if importlib.util.find_spec("rebasin") is None:
        print(f"rebasin: not importable; skipped (--install-rebasin puts {REBASIN} under {directory})")
        return None
    from rebasin import PermutationCoordinateDescent

    return PermutationCoordinateDescent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", help="some of: mlp_3x512, vgg11, resnet20 (default: all)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for all three (default 1)")
    parser.add_argument("--vgg-width", type=float, default=0.5)
    parser.add_argument("--before", default=BEFORE, help=f"git revision of 'before' (default {BEFORE})")
    parser.add_argument("--install-rebasin", action="store_true", help=f"pip install {REBASIN} first")
    parser.add_argument(
        "--rebasin-dir", type=Path, default=Path.home() / ".cache" / "modeconn-bench" / "rebasin"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = _models(args.vgg_width)
    names = args.models or list(models)
    before = _load_before(args.before)
    pcd = _rebasin(args.rebasin_dir, args.install_rebasin)

    for name in names:
        ctor, shape = models[name]
        torch.manual_seed(0)
        a = ctor().eval()
        torch.manual_seed(1)
        b = ctor().eval()
        _compare(name, a, b, torch.randn(4, *shape), before, args.before, pcd, args.repeats)


def _compare(name, a, b, x, before, rev, pcd, repeats) -> None:
    """Interleaved rounds of each method on one pair; each round's numbers, then medians."""
    with torch.no_grad():
        out_b = b(x)

    def modeconn_align(fn: Callable | None = None) -> nn.Module:
        with _match_weights(fn):
            return modeconn.align(a, b, cost="weight_matching", example_inputs=x[:2]).model

    def run_rebasin() -> nn.Module:
        bb = copy.deepcopy(b)
        pcd(a, bb, x[:2]).rebasin()
        return bb.eval()

    methods: dict[str, Callable[[], nn.Module]] = {}
    if before is not None:

        def old(*args, starts=None, **kwargs):  # it had no starts
            return before.match_weights(*args, **kwargs)

        methods[f"modeconn {rev}"] = lambda: modeconn_align(old)
    methods["modeconn now"] = modeconn_align
    if pcd is not None:
        methods["rebasin 0.0.47"] = run_rebasin
    params = sum(p.numel() for p in a.parameters())
    print(f"\n{name}: {params / 1e6:.2f}M parameters, identity objective {objective(a, b):.3f}")
    for run in methods.values():  # warm-up: imports, export, first-call caches
        run()
    times: dict[str, list[float]] = {m: [] for m in methods}
    values: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(repeats):
        order = list(methods)
        order = order[rep % len(order) :] + order[: rep % len(order)]  # interleaved, rotated
        for m in order:
            torch.manual_seed(rep)  # rebasin's sweep orders come from torch's global generator
            t0 = time.perf_counter()
            aligned = methods[m]()
            times[m].append(time.perf_counter() - t0)
            values[m].append(objective(a, aligned))
            with torch.no_grad():
                kept = float((aligned(x) - out_b).abs().max())
            print(
                f"  round {rep}  {m:<18} objective {values[m][-1]:10.3f}  {times[m][-1]:7.3f} s  kept {kept:.1e}"
            )
    print(f"  {'median of ' + str(repeats):<18} {'objective':>18} {'time':>9}")
    for m in methods:
        print(f"  {m:<18} {statistics.median(values[m]):18.3f} {statistics.median(times[m]):8.3f} s")
    if pcd is not None:
        ratio = statistics.median(times["modeconn now"]) / statistics.median(times["rebasin 0.0.47"])
        print(f"  modeconn now / rebasin time: {ratio:.2f}")


if __name__ == "__main__":
    main()
