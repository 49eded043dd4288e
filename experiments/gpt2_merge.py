"""Merging two tiny GPT-2s: the naive average, weight matching and correlation, each with and
without REPAIR, and the merged model's ``save_pretrained`` round trip.

The corpus, the sequences and the models are ``gpt2_stdlib_text.py``'s (imported, not copied):
the docstrings of a fixed list of standard-library modules read character by character, the
first 90% to train on and the last 10% held out, and two GPT-2s (Hugging Face
``GPT2LMHeadModel`` from a config: random init, no download) trained from seeds 1 and 2 with
modeconn's SGD recipe. That script saves no checkpoints, so this one trains the pair and keeps it
under ``experiments/out/gpt2_merge/`` (``save_pretrained``); a later run with the same model and
training settings reuses it (``--retrain`` trains again).

Then the held-out next-character loss of A, B, and of three merges, each plain and repaired (on
the alignment sequences, the first 1,024 training sequences; every merge uses one spec,
discovered once from a trace of one batch):

* the naive average: ``modeconn.merging.average_models`` of A and B as trained;
* weight matching: ``modeconn.merge([a, b], cost="weight_matching")``, aligned without data
  (the repaired one gets the data as ``bn_data``, for REPAIR alone);
* correlation: ``modeconn.merge([a, b], data)``.

Last, the round trip: the merged model's ``lm_head.weight`` is still ``transformer.wte.weight``
(the same storage) after the merge and after REPAIR, and ``GPT2LMHeadModel.from_pretrained`` of
its ``save_pretrained`` gives the same logits. Results go to ``experiments/out/gpt2_merge.json``.

    python experiments/gpt2_merge.py               # budget: about 10 minutes on two CPU cores
    python experiments/gpt2_merge.py --epochs 1 --width 32 --out experiments/out/gpt2_merge_smoke

Cost: the training is ``gpt2_stdlib_text.py``'s (same models, seeds and recipe; that script's
6 minutes on two idle cores include it, and the two end points here reproduce its losses); the
rest (discover, 4 merges, 2 REPAIRs on their own, 8 evaluations, the round trip) took 78 CPU
seconds. Measured on two cores shared with other work (load average about 6, so wall times
are inflated roughly threefold): 31.5 minutes wall and 22.5 CPU minutes with training, 2.3
minutes wall with the pair reused.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path

import gpt2_stdlib_text as stdlib_text  # the corpus, the sequences and the model of the two-model script
import torch
import transformers

import modeconn
from modeconn.merging import average_models

OUT = Path(__file__).resolve().parent / "out"
MODEL_SETTINGS = ("width", "layers", "heads", "context", "epochs", "lr", "batch_size")


def tied(model: torch.nn.Module) -> bool:
    return model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def trained_pair(args: argparse.Namespace, vocab: int, train, out: Path) -> tuple[list, float, bool]:
    """A and B, trained now or loaded from ``out`` when they were trained with these settings."""
    settings = {k: getattr(args, k) for k in MODEL_SETTINGS} | {"vocab": vocab}
    meta = out / "models.json"
    if not args.retrain and meta.exists() and json.loads(meta.read_text()) == settings:
        models = [transformers.GPT2LMHeadModel.from_pretrained(out / name).eval() for name in "ab"]
        return models, 0.0, True
    t0 = time.time()
    models = [stdlib_text.gpt2(seed, vocab, args) for seed in (1, 2)]
    recipe = modeconn.Settings(lr=args.lr, schedule="cosine", batch_size=args.batch_size)
    for model in models:
        modeconn.train_model(model, train, epochs=args.epochs, settings=recipe, progress=False)
        model.eval()
    out.mkdir(parents=True, exist_ok=True)
    for name, model in zip("ab", models):
        model.save_pretrained(out / name)
    meta.write_text(json.dumps(settings))
    return models, time.time() - t0, False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--align-sequences", type=int, default=1024)
    p.add_argument("--retrain", action="store_true", help="train the pair even when a saved one fits")
    p.add_argument("--out", default=str(OUT / "gpt2_merge"), help="folder of the pair; OUT.json the results")
    args = p.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", module="transformers")
    transformers.utils.logging.disable_progress_bar()
    start = time.time()

    text = stdlib_text.corpus()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    cut = int(0.9 * len(ids))
    train = stdlib_text.Sequences(ids[:cut], args.context)
    test = stdlib_text.Sequences(ids[cut:], args.context)
    print(f"corpus: {len(text):,} characters, {len(chars)} distinct; {len(train)} training and "
          f"{len(test)} held-out sequences of {args.context}", flush=True)  # fmt: skip

    (a, b), train_s, reused = trained_pair(args, len(chars), train, Path(args.out))
    print(
        "trained pair " + (f"reused from {args.out}" if reused else f"trained in {train_s:.0f}s"), flush=True
    )
    data = [{"input_ids": c} for c in train.seqs[: args.align_sequences].split(256)]
    t = time.time()
    spec = modeconn.discover(a, data[0])  # a trace of one batch; every merge below uses this spec
    permutable, hidden = spec.units()
    print(f"discover: {permutable}/{hidden} hidden units permutable, {len(spec.heads)} head groups "
          f"({time.time() - t:.1f}s)", flush=True)  # fmt: skip

    rows, checks = [], {}

    def report(label: str, model: torch.nn.Module, seconds: float, result=None) -> None:
        loss, accuracy = modeconn.evaluate(model, test)
        row = {"model": label, "loss": loss, "accuracy": accuracy, "seconds": seconds}
        if result is not None:
            row["moved"] = result.history[0]["moved"]
            row["notes"] = result.notes
        rows.append(row)
        print(f"{label}: held-out loss {loss:.3f}, accuracy {accuracy:.1f}% ({seconds:.1f}s)", flush=True)

    report("A", a, 0.0)
    report("B", b, 0.0)

    t = time.time()
    naive = average_models([a, b], [0.5, 0.5])
    report("naive average", naive, time.time() - t)
    t = time.time()
    modeconn.repair(naive, [a, b], data)
    report("naive average + REPAIR", naive, time.time() - t)

    merges = {
        "weight matching": dict(data=None, cost="weight_matching"),
        "correlation": dict(data=data, cost="correlation"),
    }
    results = {}
    for label, kw in merges.items():
        for repaired in (False, True):
            extra = {"bn_data": data} if repaired and kw["data"] is None else {}
            t = time.time()
            result = modeconn.merge([a, b], **kw, spec=spec, repair=repaired, **extra)
            name = f"{label} + REPAIR" if repaired else label
            report(name, result.model, time.time() - t, result)
            checks[f"lm_head tied to wte: {name}"] = tied(result.model)
            results[name] = result

    # REPAIR called on its own keeps the tie too; the repaired correlation merge goes round trip
    plain = copy.deepcopy(results["correlation"].model)
    modeconn.repair(plain, results["correlation"].aligned, data)
    checks["lm_head tied to wte: correlation, then modeconn.repair"] = tied(plain)
    merged = results["correlation + REPAIR"].model
    inputs = test.seqs[:16]
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        merged.save_pretrained(folder)
        loaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        before, after = merged(input_ids=inputs).logits, loaded(input_ids=inputs).logits
    checks["round trip: class"] = type(loaded).__name__
    checks["round trip: max |logit difference|"] = float((before - after).abs().max())
    checks["round trip: logits equal"] = bool(torch.equal(before, after))
    checks["lm_head tied to wte: after from_pretrained"] = tied(loaded)

    print("\n| model | held-out loss | accuracy (%) | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['loss']:.3f} | {r['accuracy']:.1f} | {r['seconds']:.1f} |")
    print()
    for k, v in checks.items():
        print(f"{k}: {v}")
    total = time.time() - start
    print(f"\ntotal {total:.0f}s")
    path = Path(f"{args.out}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            {"args": vars(args), "reused_pair": reused, "train_seconds": train_s, "total_seconds": total,
             "rows": rows, "checks": checks},
            f,
            indent=1,
        )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
