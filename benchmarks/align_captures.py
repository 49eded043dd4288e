"""Graph captures per ``align`` call, and ``align``'s time with the spec given, before and after
captures were reused (issue 26), side by side in one run.

"Before" is the package at a git revision (default ``df094c0``, the last commit before the
capture layer), unpacked into a temporary folder; "after" is this working tree. Each
measurement runs in a fresh subprocess (2 threads), and the two alternate ``--rounds`` times.

In each subprocess: two random-init models of one architecture (seeds 0 and 1), the spec
discovered on model A outside the timing (``discover`` on two samples of the data, as ``align``
itself does), then ``align(a, b, data, spec=spec)`` once to warm up and ``--repeats`` times
timed (the minimum is kept). Captures are counted by wrapping ``torch.fx.Tracer.trace`` (fx)
and ``torch.export.export`` (export) during one timed call.

Models: a tiny Llama (transformers, 2 layers, hidden 64, 4 heads, 2 key/value heads, vocabulary
256; captured by torch.export) on 64 sequences of 32 tokens, and timm resnet18 (10 classes;
torch.fx) on 64 random 3x32x32 images. Batches of 32.

    python benchmarks/align_captures.py                 # both models, 3 rounds
    python benchmarks/align_captures.py --before HEAD~3 --rounds 5 llama
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("llama", "resnet18")


def _models(name: str):
    import torch

    def build(seed: int):
        torch.manual_seed(seed)
        if name == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            config = LlamaConfig(
                vocab_size=256,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
            )
            return LlamaForCausalLM(config).eval()
        import timm

        return timm.create_model("resnet18", num_classes=10).eval()

    gen = torch.Generator().manual_seed(0)
    if name == "llama":
        data = [{"input_ids": torch.randint(0, 256, (32, 32), generator=gen)} for _ in range(2)]
        probe = {"input_ids": data[0]["input_ids"][:2]}
    else:
        data = [torch.randn(32, 3, 32, 32, generator=gen) for _ in range(2)]
        probe = data[0][:2]
    return build(0), build(1), data, probe


def measure(name: str, repeats: int) -> dict:
    """One subprocess's figures for ``name`` (the package it imports is the one measured)."""
    import torch
    import torch.fx as fx

    import modeconn

    torch.set_num_threads(2)
    a, b, data, probe = _models(name)
    spec = modeconn.discover(a, probe)
    modeconn.align(a, b, data, spec=spec)  # warm-up
    counts = {"fx": 0, "export": 0}
    trace, export = fx.Tracer.trace, torch.export.export

    def counting_trace(self, *args, **kwargs):
        counts["fx"] += 1
        return trace(self, *args, **kwargs)

    def counting_export(*args, **kwargs):
        counts["export"] += 1
        return export(*args, **kwargs)

    fx.Tracer.trace, torch.export.export = counting_trace, counting_export
    try:
        modeconn.align(a, b, data, spec=spec)
    finally:
        fx.Tracer.trace, torch.export.export = trace, export
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        modeconn.align(a, b, data, spec=spec)
        times.append(time.perf_counter() - start)
    return {
        "captures": counts,
        "seconds": min(times),
        "capture": spec.capture,
        "package": str(Path(modeconn.__file__).parent.parent),
    }


def _unpack(rev: str, into: Path) -> Path:
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    # the installed layout: modeconn.plugins and modeconn.registry are top-level folders in the repo
    (into / "modeconn" / "plugins").symlink_to(into / "plugins")
    (into / "modeconn" / "registry").symlink_to(into / "registry")
    return into


def _run(tree: Path, name: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import align_captures as m; "
        "print(json.dumps(m.measure(sys.argv[2], int(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "benchmarks"), name, str(repeats)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"{name} in {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(result["package"]).is_relative_to(tree):
        raise SystemExit(f"the subprocess imported {result['package']}, not the tree {tree}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", choices=[*MODELS, []], metavar="MODEL", help=", ".join(MODELS))
    parser.add_argument("--before", default="df094c0", help="the git revision measured as 'before'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _unpack(args.before, Path(tmp)), "after": REPO}
        print(
            f"before = {args.before}, after = working tree; {args.rounds} rounds, min of {args.repeats} per round"
        )
        print(
            f"{'model':<10} {'capture':<8} {'captures before':>16} {'after':>6} {'align before':>13} {'after':>8} {'ratio':>6}"
        )
        for name in args.models or MODELS:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for which in ("before", "after"):  # interleaved: load drifts hit both alike
                    runs[which].append(_run(trees[which], name, args.repeats))
            before, after = runs["before"], runs["after"]
            t0 = statistics.median(r["seconds"] for r in before)
            t1 = statistics.median(r["seconds"] for r in after)

            def count(r: dict) -> str:
                return "+".join(f"{n} {k}" for k, n in r["captures"].items() if n) or "0"

            print(
                f"{name:<10} {after[0]['capture']:<8} {count(before[0]):>16} {count(after[0]):>6} "
                f"{t0:>12.3f}s {t1:>7.3f}s {t1 / t0:>6.2f}"
            )


if __name__ == "__main__":
    main()
