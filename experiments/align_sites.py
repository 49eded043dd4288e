"""Which sites alignment observes, and at what spatial stride: time and straight-line barrier.

A group of units is often observable at several sites (a residual stage at every block's
output). Observing all of them costs one C x C product per site and batch; the paper matches
one activation per layer. This script trains a pair of ResNet20s (width 16) on a CIFAR-10
subset, aligns B to A by correlation with each choice of ``sites`` and ``spatial_stride``,
and reports the time of ``align``, how many units each choice matches as ``sites="all"``
does, and the loss barrier on the straight line (BatchNorm recomputed at each t).

Budget (two CPU cores, ~10 minutes): 10,000 training images, 4 epochs per model (SGD,
cosine schedule), alignment on 2,000 images, 2,000 test images, 11 points per line.

    python experiments/align_sites.py --root ../shared/data
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

CHOICES = [("all", 1), ("last", 1), (2, 1), ("all", 2), ("last", 2)]


def train(seed: int, train_set, epochs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = modeconn.create_model("resnet20", width=16, num_classes=10)
    settings = modeconn.Settings(lr=0.05, schedule="cosine", batch_size=128)
    modeconn.train_model(model, train_set, epochs=epochs, settings=settings, progress=False)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=10000, test_size=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--out", default=str(OUT / "align_sites.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    sets = cifar_subsets(args)
    a, b = train(1, sets.train, args.epochs), train(2, sets.train, args.epochs)
    align_loader = DataLoader(sets.align, batch_size=256)
    unaligned = modeconn.evaluate_line(a, b, args.points, sets.test, bn_data=sets.bn, label="unaligned")
    print(
        f"end points {unaligned.accuracy[0]:.1f}% / {unaligned.accuracy[-1]:.1f}%, unaligned barrier {unaligned.barrier:.3f}"
    )
    rows, reference = [], None
    for sites, stride in CHOICES:
        modeconn.align(a, b, [next(iter(align_loader))[0]], sites=sites, spatial_stride=stride)  # warm-up
        t0 = time.perf_counter()
        result = modeconn.align(a, b, align_loader, sites=sites, spatial_stride=stride)
        seconds = time.perf_counter() - t0
        reference = reference or result.perms
        same = sum(int((result.perms[g] == reference[g]).sum()) for g in reference)
        total = sum(len(p) for p in reference.values())
        line = modeconn.evaluate_line(
            a, result.model, args.points, sets.test, bn_data=sets.bn, label=f"{sites}/{stride}"
        )
        rows.append(
            {
                "sites": sites,
                "stride": stride,
                "seconds": seconds,
                "same_as_all": same / total,
                "barrier": line.barrier,
                "min_accuracy": line.min_accuracy,
            }
        )
        print(
            f"sites={sites!s:>4} stride={stride}: align {seconds:.2f} s, units as sites='all' {100 * same / total:.1f}%, "
            f"barrier {line.barrier:.3f}, min accuracy {line.min_accuracy:.1f}%",
            flush=True,
        )
    print("\n| sites | spatial_stride | align (s) | units matched as `all` | barrier | min accuracy (%) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sites']} | {r['stride']} | {r['seconds']:.2f} | {100 * r['same_as_all']:.1f}% | {r['barrier']:.3f} | {r['min_accuracy']:.1f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "unaligned_barrier": unaligned.barrier, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
