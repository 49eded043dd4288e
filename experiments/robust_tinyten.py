"""The shape of the paper's Fig. 4 on CIFAR-10 with TinyTen, at a budget for two CPU cores.

A pair of adversarially trained TinyTens (Madry's PGD training, L∞ ε = 8/255, 5 steps of
α = 2/255 — the paper's setup; inputs in [0, 1], normalization inside the model), B aligned to
A by correlation on PGD examples (each model's own, as the paper's code does, and — measured
too — shared ones), then robust quadratic Bezier curves (the ``pgd`` optimizer) from A to B and
from A to aligned B. Every curve and straight line is evaluated at evenly spaced t on test
images, clean and under PGD-10 (L∞ ε = 8/255, α = 2/255), with BatchNorm statistics recomputed
at each t on adversarial training examples (the paper's choice). Prints tables, writes a JSON
file and the figure; checkpoints make an interrupted run resumable.

    python experiments/robust_tinyten.py --root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import modeconn
from modeconn.attacks import PGD, RobustClassification
from modeconn.metrics import Classification

from common import OUT, add_data_args, cifar_subsets, quiet, trained_end_point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=10000, test_size=1000)
    p.add_argument("--seeds", type=int, nargs=2, default=(1, 2))
    p.add_argument("--epochs", type=int, default=10, help="robust end-point epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-step", type=int, default=4)
    p.add_argument("--curve-epochs", type=int, default=6)
    p.add_argument("--curve-lr", type=float, default=0.02)
    p.add_argument("--curve-lr-step", type=int, default=3)
    p.add_argument("--points", type=int, default=7)
    p.add_argument("--bn-size", type=int, default=1000, help="training images for BatchNorm statistics")
    p.add_argument("--out", default=str(OUT / "robust_tinyten"))
    args = p.parse_args()

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = cifar_subsets(args, normalize=False)
    bn = DataLoader(Subset(sets.bn.dataset, range(args.bn_size)), batch_size=250)
    train_attack, eval_attack = PGD.preset("train"), PGD.preset("eval")
    metrics = [Classification(), RobustClassification(eval_attack, seed=0)]
    timing = {}

    t0 = time.time()
    ends = []
    for k, seed in enumerate(args.seeds):
        print(f"robust end point {'AB'[k]} (seed {seed}), {train_attack.describe()}", flush=True)
        checkpoint = out / f"{'ab'[k]}.pt"
        ends.append(
            trained_end_point(
                args, sets, "tinyten", seed, checkpoint, adversary=train_attack, normalize="cifar10"
            )
        )
    a, b = ends
    timing["end_points_s"] = round(time.time() - t0)

    t0 = time.time()
    align_data = DataLoader(sets.align, batch_size=250)
    aligned = {
        mode: modeconn.align(a, b, align_data, adversary=train_attack, adversarial=mode)
        for mode in ("own", "shared")
    }
    clean_aligned = modeconn.align(a, b, align_data)
    timing["alignment_s"] = round(time.time() - t0)
    groups = [g.name for g in aligned["own"].spec.permutable]
    units = sum(len(aligned["own"].perms[g]) for g in groups)

    def agree(p, q):
        return sum(int((p[g] == q[g]).sum()) for g in groups) / units

    alignment = {
        "own_vs_shared_units_agreeing": agree(aligned["own"].perms, aligned["shared"].perms),
        "own_vs_clean_units_agreeing": agree(aligned["own"].perms, clean_aligned.perms),
        "mean_correlation": {m: r.signature.mean() for m, r in aligned.items()},
    }
    print(f"alignment: {alignment}", flush=True)

    reports = {}
    t0 = time.time()
    for name, end_b in (
        ("unaligned", b),
        ("aligned", aligned["own"].model),
        ("aligned_shared", aligned["shared"].model),
    ):
        reports[f"{name} line"] = modeconn.evaluate_line(
            a,
            end_b,
            args.points,
            sets.test,
            bn,
            label=f"{name} line",
            metrics=metrics,
            bn_adversary=train_attack,
        )
        print(reports[f"{name} line"], flush=True)
    for name, end_b in (("unaligned", b), ("aligned", aligned["own"].model)):
        torch.manual_seed(100)
        curve = modeconn.Curve(a, end_b, family="bezier", num_bends=1)
        print(f"fitting the robust {name} curve", flush=True)
        t1 = time.time()
        modeconn.fit_curve(
            curve,
            sets.train,
            optimizer="pgd",
            attack=train_attack,
            epochs=args.curve_epochs,
            lr=args.curve_lr,
            lr_step=args.curve_lr_step,
            checkpoint=out / f"{name}_curve.pt",
            **quiet(),
        )
        timing[f"{name}_curve_s"] = round(time.time() - t1)
        reports[f"{name} curve"] = modeconn.evaluate_curve(
            curve,
            sets.test,
            bn_data=bn,
            num_points=args.points,
            label=f"{name} curve",
            metrics=metrics,
            bn_adversary=train_attack,
        )
        print(reports[f"{name} curve"], flush=True)
    timing["evaluation_and_curves_s"] = round(time.time() - t0)
    modeconn.PathReport.plot(
        [reports[k] for k in ("unaligned curve", "aligned curve", "unaligned line", "aligned line")],
        out / "robust_curves.png",
    )

    print("\n| path | clean: t=0 / min / mid / t=1 | robust: t=0 / min / mid / t=1 | loss barrier |")
    print("|---|---|---|---|")
    for key, r in reports.items():
        rob = r.values("robust_accuracy")
        mid = len(r.t) // 2
        print(
            f"| {key} | {r.accuracy[0]:.1f} / {min(r.accuracy):.1f} / {r.accuracy[mid]:.1f} / {r.accuracy[-1]:.1f} | "
            f"{rob[0]:.1f} / {min(rob):.1f} / {rob[mid]:.1f} / {rob[-1]:.1f} | {r.barrier:.3f} |"
        )
    with open(out / "results.json", "w") as f:
        json.dump(
            {
                "args": vars(args),
                "timing": timing,
                "alignment": alignment,
                "reports": {k: r.to_dict() for k, r in reports.items()},
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
