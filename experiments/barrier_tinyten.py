"""Straight-line loss barriers between TinyTen pairs on CIFAR-10, unaligned vs aligned.

The reviewers of Tatro et al. asked whether alignment alone, without learning a curve, already
lowers the barrier on the straight line between two models. This script answers it on a
budget that fits two CPU cores: each model trains for a few epochs on a subset of CIFAR-10
(SGD, momentum 0.9, weight decay 5e-4, a cosine learning-rate schedule over the epochs), B is aligned to A by
correlation on 20% of that subset, and both lines are evaluated at evenly spaced t with
BatchNorm statistics recomputed at each t.

    python experiments/barrier_tinyten.py --root ../shared/data --pairs 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import modeconn

from common import OUT, add_data_args, cifar_subsets


def train(seed: int, train_set, epochs: int, lr: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = modeconn.create_model("tinyten", num_classes=10)
    settings = modeconn.Settings(lr=lr, schedule="cosine", batch_size=128)  # momentum 0.9, wd 5e-4
    modeconn.train_model(model, train_set, epochs=epochs, settings=settings, progress=False)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=10000, test_size=2000)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--out", default=str(OUT / "barrier_tinyten.json"))
    args = p.parse_args()

    torch.set_num_threads(2)
    sets = cifar_subsets(args)
    train_set, align_set, bn_loader, test_loader = sets.train, sets.align, sets.bn, sets.test

    rows = []
    for pair in range(args.pairs):
        t0 = time.time()
        a = train(2 * pair + 1, train_set, args.epochs, args.lr)
        b = train(2 * pair + 2, train_set, args.epochs, args.lr)
        t_train = time.time() - t0
        result = modeconn.align(a, b, DataLoader(align_set, batch_size=256))
        unaligned = modeconn.evaluate_line(
            a, b, args.points, test_loader, bn_data=bn_loader, label="unaligned"
        )
        aligned = modeconn.evaluate_line(
            a, result.model, args.points, test_loader, bn_data=bn_loader, label="aligned"
        )
        corr_before, corr_after = result.signature.mean()
        row = {
            "pair": pair,
            "train_seconds": round(t_train),
            "acc_a": unaligned.accuracy[0],
            "acc_b": unaligned.accuracy[-1],
            "corr_before": corr_before,
            "corr_after": corr_after,
            "unaligned": unaligned.to_dict(),
            "aligned": aligned.to_dict(),
        }
        rows.append(row)
        print(
            f"pair {pair}: end points {row['acc_a']:.1f}% / {row['acc_b']:.1f}% (trained in {t_train:.0f}s), "
            f"mean matched correlation {corr_before:.3f} -> {corr_after:.3f}",
            flush=True,
        )
        print(unaligned, flush=True)
        print(aligned, flush=True)
        modeconn.PathReport.plot([unaligned, aligned], f"barrier_tinyten_pair{pair}.png")

    print(
        "\n| pair | end points (acc %) | barrier unaligned | barrier aligned | min acc unaligned | min acc aligned |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        u, al = r["unaligned"], r["aligned"]
        print(
            f"| {r['pair']} | {r['acc_a']:.1f} / {r['acc_b']:.1f} | {u['barrier']:.3f} | {al['barrier']:.3f} | "
            f"{u['min_accuracy']:.1f} | {al['min_accuracy']:.1f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "pairs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
