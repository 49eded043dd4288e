"""The paper's Table 1 on CIFAR-10 for TinyTen or ResNet32, at a budget for two CPU cores.

For each pair of seeds: train two end points, align B to A by correlation, fit an unaligned and
an aligned quadratic Bezier curve (one bend), and — the paper's PAM rows — the same curves with
the permutation of B learned jointly (``optimizer="pam"``, from the identity on B: "PAM
Unaligned"; from the identity on aligned B: "PAM Aligned"), then evaluate every curve and both
straight lines at evenly spaced t on the test set, with BatchNorm statistics recomputed at each
t. ``--curves`` picks the rows. Prints a table of average / minimum test accuracy along the
curves next to the paper's rows for the model, and writes a JSON file and a plot per pair.
Checkpoints make an interrupted run resumable: run the same command again.

    python experiments/table1.py --root ../shared/data --pairs 2
    python experiments/table1.py --root ../shared/data --model resnet32 --pairs 1 \
        --curves unaligned,aligned --train-size 10000 --epochs 8 --curve-epochs 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import modeconn

from common import OUT, add_data_args, cifar_subsets, quiet, trained_end_point

PAPER = {  # Tatro et al., Table 1, CIFAR-10: end points; average / minimum accuracy along the curve
    "tinyten": {
        "endpoints": 89.0,
        "unaligned": (87.4, 82.8),
        "aligned": (88.5, 87.8),
        "pam_unaligned": (87.6, 84.0),
        "pam_aligned": (88.4, 87.6),
    },
    "resnet32": {
        "endpoints": 92.9,
        "unaligned": (92.2, 89.1),
        "aligned": (92.7, 92.2),
        "pam_unaligned": (92.4, 89.9),
        "pam_aligned": (92.7, 92.1),
    },
}
CURVES = ("unaligned", "aligned", "pam_unaligned", "pam_aligned")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=20000, test_size=10000)
    p.add_argument("--model", default="tinyten", choices=sorted(PAPER))
    p.add_argument("--curves", default=",".join(CURVES), help=f"which of {', '.join(CURVES)}")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20, help="end-point epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-step", type=int, default=5, help="halve the end points' lr every this many epochs")
    p.add_argument("--curve-epochs", type=int, default=10)
    p.add_argument("--curve-lr", type=float, default=0.02)
    p.add_argument("--curve-lr-step", type=int, default=4)
    p.add_argument("--pam-perm-epochs", type=int, default=10, help="PAM's permutation epochs (paper: 20)")
    p.add_argument("--pam-perm-lr", type=float, default=0.05, help="PAM's permutation lr (paper: 0.05)")
    p.add_argument("--points", type=int, default=11)
    p.add_argument("--out", default=None, help="default: experiments/out/table1_<model>")
    args = p.parse_args()
    curves = tuple(c for c in args.curves.split(",") if c)
    if not curves or not set(curves) <= set(CURVES):
        p.error(f"--curves takes names from {', '.join(CURVES)}, got {args.curves!r}")
    paper = PAPER[args.model]

    torch.set_num_threads(2)
    out = Path(args.out or OUT / f"table1_{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    sets = cifar_subsets(args)

    rows = []
    for pair in range(args.pairs):
        t0 = time.time()
        ends = []
        for k, seed in enumerate((2 * pair + 1, 2 * pair + 2)):
            print(f"pair {pair}: training end point {'AB'[k]} (seed {seed})", flush=True)
            ends.append(trained_end_point(args, sets, args.model, seed, out / f"pair{pair}_{'ab'[k]}.pt"))
        a, b = ends
        t_train = time.time() - t0
        result = modeconn.align(a, b, DataLoader(sets.align, batch_size=256))
        reports, t_curves = {}, 0.0
        pam_logs = {}
        for name in curves:
            end_b = b if "unaligned" in name else result.model
            torch.manual_seed(100 + pair)
            curve = modeconn.Curve(a, end_b, family="bezier", num_bends=1)
            print(f"pair {pair}: fitting the {name} curve", flush=True)
            t1 = time.time()
            pam = (
                dict(
                    optimizer="pam",
                    init="identity",
                    perm_epochs=args.pam_perm_epochs,
                    perm_lr_scale=args.pam_perm_lr / args.curve_lr,
                )
                if name.startswith("pam")
                else {}
            )
            history = modeconn.fit_curve(
                curve,
                sets.train,
                epochs=args.curve_epochs + (args.pam_perm_epochs if pam else 0),
                lr=args.curve_lr,
                lr_step=args.curve_lr_step,
                checkpoint=out / f"pair{pair}_{name}_curve.pt",
                **pam,
                **quiet(),
            )
            if pam:
                pam_logs[name] = history.summary["log"]
                print(f"  PAM log: {history.summary['log']}", flush=True)
            t_curves += time.time() - t1
            reports[name] = modeconn.evaluate_curve(
                curve, sets.test, bn_data=sets.bn, num_points=args.points, label=f"{name} curve"
            )
            reports[name + "_line"] = modeconn.evaluate_line(
                a, end_b, args.points, sets.test, sets.bn, label=f"{name} line"
            )
            print(reports[name], flush=True)
        modeconn.PathReport.plot(
            [reports[k] for k in (*curves, "unaligned_line", "aligned_line") if k in reports],
            out / f"pair{pair}.png",
        )
        row = {
            "pair": pair,
            "train_seconds": round(t_train),
            "curve_seconds": round(t_curves),
            "acc_a": reports[curves[0]].accuracy[0],
            "acc_b": reports[curves[0]].accuracy[-1],
            "corr": result.signature.mean(),
            "pam": pam_logs,
            **{k: r.to_dict() for k, r in reports.items()},
        }
        rows.append(row)

    print("\n| average / minimum test accuracy (%) | end points | " + " | ".join(curves) + " |")
    print("|---|---|" + "---|" * len(curves))
    print(
        f"| paper (full budget) | {paper['endpoints']} | "
        + " | ".join(f"{paper[c][0]} / {paper[c][1]}" for c in curves)
        + " |"
    )
    for r in rows:
        print(
            f"| pair {r['pair']} | {r['acc_a']:.1f} / {r['acc_b']:.1f} | "
            + " | ".join(f"{r[c]['average_accuracy']:.1f} / {r[c]['min_accuracy']:.1f}" for c in curves)
            + " |"
        )
    lines = [k for k in ("unaligned_line", "aligned_line") if k in rows[0]]
    print("\n| loss barrier | " + " | ".join(k.replace("_", " ") for k in lines + list(curves)) + " |")
    print("|---|" + "---|" * (len(lines) + len(curves)))
    for r in rows:
        print(
            f"| pair {r['pair']} | "
            + " | ".join(f"{r[k]['barrier']:.3f}" for k in lines + list(curves))
            + " |"
        )
    with open(out / "results.json", "w") as f:
        json.dump({"args": vars(args), "pairs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
