"""Two tiny GPT-2 language models on real text, and the paths between them, aligned or not.

The text ships with Python: the docstrings of a fixed list of standard-library modules and of
their public members (``inspect.getdoc``), read character by character (Python 3.11 here; the
corpus changes with the Python version, and the script prints its size). The first 90% trains,
the last 10% is held out. Two GPT-2s (Hugging Face ``GPT2LMHeadModel`` from a config: random
init, no download) train from seeds 1 and 2 with modeconn's SGD recipe; model B is aligned to A
by correlation twice: with its heads held in place (each head's dims matched on their own) and
with head permutations. Then the held-out next-character loss along the straight line and
along a fitted quadratic Bezier curve, between A and B as trained and between A and each
aligned B.

    python experiments/gpt2_stdlib_text.py            # about 5 minutes on two otherwise idle CPU cores
    python experiments/gpt2_stdlib_text.py --epochs 2 --curve-epochs 1 --width 32   # a smoke run
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import time
import warnings
from pathlib import Path

import torch

import modeconn

from common import OUT

MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "email",
    "fractions", "functools", "heapq", "http.client", "inspect", "itertools", "json", "logging",
    "math", "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "zipfile",
)  # fmt: skip


def corpus() -> str:
    """The docstrings of MODULES and their public members, in a fixed order."""
    parts = []
    for name in MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None))
            if doc and doc not in parts:
                parts.append(doc)
    return "\n\n".join(p for p in parts if p)


class Sequences(torch.utils.data.Dataset):
    """Consecutive chunks of ``length`` characters, each a sample ``{"input_ids", "labels"}``."""

    def __init__(self, ids: torch.Tensor, length: int):
        n = len(ids) // length
        self.seqs = ids[: n * length].view(n, length)

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.seqs[i], "labels": self.seqs[i]}


def gpt2(seed: int, vocab: int, args: argparse.Namespace) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        n_positions=args.context,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--curve-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--out", default=str(OUT / "gpt2_stdlib_text"))
    args = p.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", module="transformers")

    text = corpus()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    cut = int(0.9 * len(ids))
    train, test = Sequences(ids[:cut], args.context), Sequences(ids[cut:], args.context)
    print(f"corpus: {len(text):,} characters, {len(chars)} distinct; {len(train)} training and "
          f"{len(test)} held-out sequences of {args.context}", flush=True)  # fmt: skip
    settings = modeconn.Settings(lr=args.lr, schedule="cosine", batch_size=args.batch_size)

    t0 = time.time()
    a, b = gpt2(1, len(chars), args), gpt2(2, len(chars), args)
    for model in (a, b):
        modeconn.train_model(model, train, epochs=args.epochs, settings=settings, progress=False)
    ends = [modeconn.evaluate(m, test) for m in (a, b)]
    print(f"trained in {time.time() - t0:.0f}s: held-out loss A {ends[0][0]:.3f}, B {ends[1][0]:.3f} "
          f"(next-character accuracy {ends[0][1]:.1f}%, {ends[1][1]:.1f}%)", flush=True)  # fmt: skip

    align_data = [{"input_ids": c} for c in train.seqs[:1024].split(256)]  # the first 1,024 sequences
    spec = modeconn.discover(a, align_data[0])
    kept = spec.fixing([h.name for h in spec.heads], "heads held in place, for comparison")
    aligned = {}
    for label, s in (("aligned, heads in place", kept), ("aligned with heads", spec)):
        result = modeconn.align(a, b, align_data, spec=s)
        permutable, hidden = s.units()
        moved = sum(int((result.perms[h.name] != torch.arange(h.size)).sum()) for h in s.heads)
        print(f"{label}: {result.spec.capture} capture, {permutable}/{hidden} hidden units permutable, "
              f"{len(s.heads)} head groups, {moved} heads moved; mean matched correlation "
              f"{result.signature.mean()[0]:.3f} -> {result.signature.mean()[1]:.3f}", flush=True)  # fmt: skip
        aligned[label] = result.model

    reports = []
    curve_settings = modeconn.Settings(lr=args.lr / 2, schedule="cosine", batch_size=args.batch_size)
    for label, other in (("unaligned", b), *aligned.items()):
        reports.append(modeconn.evaluate_line(a, other, args.points, test, label=f"{label} line"))
        curve = modeconn.Curve(a, other, "bezier", num_bends=1)
        modeconn.fit_curve(curve, train, epochs=args.curve_epochs, settings=curve_settings, progress=False)
        reports.append(modeconn.evaluate_curve(curve, test, num_points=args.points, label=f"{label} curve"))
        for r in reports[-2:]:
            print(r, flush=True)

    print("\n| path | loss at A | loss at B | max loss | barrier | min accuracy (%) |")
    print("|---|---|---|---|---|---|")
    for r in reports:
        print(f"| {r.label} | {r.loss[0]:.3f} | {r.loss[-1]:.3f} | {max(r.loss):.3f} | {r.barrier:.3f} | "
              f"{r.min_accuracy:.1f} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    modeconn.PathReport.plot(reports, f"{args.out}.png", title="tiny GPT-2 on stdlib docstrings")
    with open(f"{args.out}.json", "w") as f:
        json.dump({"args": vars(args), "paths": [r.to_dict() for r in reports]}, f, indent=1)


if __name__ == "__main__":
    main()
