"""The paper's results not reproduced elsewhere (issue 31), on one TinyTen pair on CIFAR-10, at a
budget for two CPU cores.

Parts (``--parts``, comma-separated; each writes ``<out>/<part>.json`` and is skipped when that
file exists, so an interrupted run resumes where it stopped):

``costs``
    Fig. 2 and Fig. 3 (bottom left). B aligned to A by each cost — ``correlation``
    (post-activations, the paper's choice), ``l2_preact`` (pre-activations, the cost of
    Theorem 3.1) and ``weight_matching`` (data-free; the paper predates it) — and left
    unaligned; a one-bend Bezier curve fitted for each from the same seed; every curve
    evaluated at ``--points`` t on the test subset with BatchNorm statistics recomputed; the
    training loss of every curve by epoch, and the first epoch at which the aligned curve's
    loss is at most the unaligned curve's final loss.
``signatures``
    Fig. 1, middle and right. The correlation signature of each curve's midpoint against end
    point A: before aligning the midpoint (the curve's own units) and after (``align(A,
    midpoint)``), for the unaligned and the correlation-aligned curves of part ``costs``; and,
    for comparison, that of the midpoint of the straight line the curve started from.
``multistage``
    Reviewer 1's multi-stage alignment, for the correlation-aligned and the unaligned curves
    of part ``costs``. The curve's midpoint M (BatchNorm statistics recomputed) is aligned
    again to A and to B (the permutation may change along the path); the path then runs
    A → Q_A·M, jumps to Q_B·M (the same function: both are permutations of M) and runs on to
    B. Each half is fitted as a one-bend Bezier curve for ``--segment-epochs``, and so are the
    halves through M itself (no re-alignment), so the two differ only in the re-alignment;
    where re-aligning moves no unit the two paths are one and it is fitted once. Reports the
    units each re-alignment moved and every barrier, next to the one-piece curve's.
``subsets``
    Reviewer 3: B aligned to A by correlation on 100 ... 10,000 plain training images and on
    all 50,000 (the reference); for each, the share of units matched as the reference matches
    them and the test loss barrier of the straight line; and the same for two disjoint
    subsets of ``--disjoint-size`` images.

Budget (the defaults, as ``experiments/table1.py``): end points trained for 20 epochs
on a fixed 20,000-image training subset; curves for 10 epochs (lr 0.02, halved every 4);
alignment for ``costs`` on 4,000 plain training images (20% of the subset); 10,000 test
images; 11 points per path. ``--segment-epochs 0`` evaluates part ``multistage``'s halves as
lines only.

Runtime on two CPU cores (2026-12-07, partly beside other work): end points 30 min, ``costs``
31 min, ``signatures`` under a minute; ``subsets`` 16 min and ``multistage`` (lines only) 7 min
with ``--test-size 2000 --points 6``, as docs/paper.md ran them:

    python experiments/paper_tinyten.py --root ../shared/data --parts costs,signatures
    python experiments/paper_tinyten.py --root ../shared/data --parts subsets --test-size 2000 --points 6
    python experiments/paper_tinyten.py --root ../shared/data --parts multistage --segment-epochs 0 \
        --test-size 2000 --points 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import modeconn
from modeconn import data

from common import OUT, add_data_args, cifar_subsets, quiet, trained_end_point

COSTS = ("correlation", "l2_preact", "weight_matching")
CURVES = ("unaligned", *COSTS)
PAPER = {  # Tatro et al., Table 1 (TinyTen, CIFAR-10): average / minimum test accuracy along the curve
    "unaligned": (87.4, 82.8),
    "correlation": (88.5, 87.8),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=20000, test_size=10000)
    p.add_argument("--parts", default="costs,signatures,subsets,multistage")
    p.add_argument("--seeds", default="1,2", help="the end points' seeds")
    p.add_argument("--epochs", type=int, default=20, help="end-point epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-step", type=int, default=5)
    p.add_argument("--curve-epochs", type=int, default=10)
    p.add_argument("--curve-lr", type=float, default=0.02)
    p.add_argument("--curve-lr-step", type=int, default=4)
    p.add_argument("--points", type=int, default=11)
    p.add_argument(
        "--segment-epochs",
        type=int,
        default=5,
        help="epochs per half in part multistage (0: the halves as lines only)",
    )
    p.add_argument(
        "--multistage-curves", default="correlation,unaligned", help="the curves part multistage re-aligns"
    )
    p.add_argument("--sizes", default="100,300,1000,3000,10000", help="alignment-set sizes for part subsets")
    p.add_argument("--disjoint-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT / "paper_tinyten"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = cifar_subsets(args)
    a, b = _end_points(args, sets, out)
    parts = {"costs": _costs, "signatures": _signatures, "subsets": _subsets, "multistage": _multistage}
    for name in args.parts.split(","):
        path = out / f"{name}.json"
        if path.exists():
            print(f"{name}: done before ({path})", flush=True)
            continue
        t0 = time.time()
        result = parts[name](args, sets, out, a, b)
        result["seconds"] = round(time.time() - t0)
        path.write_text(json.dumps(result, indent=1))
        print(f"{name}: {result['seconds']} s, written to {path}", flush=True)
    _summary(out)


def _end_points(args, sets, out: Path):
    ends = []
    for k, seed in enumerate(int(s) for s in args.seeds.split(",")):
        print(f"end point {'AB'[k]} (seed {seed})", flush=True)
        ends.append(trained_end_point(args, sets, "tinyten", seed, out / f"end_{'ab'[k]}.pt").eval())
    return ends


def _curve(args, sets, out: Path, a, b, name: str):
    """The one-bend Bezier curve from A to ``b``, fitted (or read back from its checkpoint)."""
    torch.manual_seed(100)
    curve = modeconn.Curve(a, b, family="bezier", num_bends=1)
    print(f"fitting the {name} curve", flush=True)
    history = modeconn.fit_curve(
        curve,
        sets.train,
        epochs=args.curve_epochs,
        lr=args.curve_lr,
        lr_step=args.curve_lr_step,
        checkpoint=out / f"curve_{name}.pt",
        **quiet(),
    )
    return curve, history


def _costs(args, sets, out: Path, a, b) -> dict:
    align_data = DataLoader(sets.align, batch_size=256)
    rows = {}
    for name in CURVES:
        t0 = time.time()
        end_b = b if name == "unaligned" else modeconn.align(a, b, align_data, cost=name).model
        t_align = time.time() - t0
        curve, history = _curve(args, sets, out, a, end_b, name)
        report = modeconn.evaluate_curve(
            curve, sets.test, bn_data=sets.bn, num_points=args.points, label=name
        )
        line = modeconn.evaluate_line(a, end_b, args.points, sets.test, sets.bn, label=f"{name} line")
        print(report, line, sep="\n", flush=True)
        rows[name] = {
            "align_seconds": round(t_align, 1),
            "curve": report.to_dict(),
            "line": line.to_dict(),
            "train_loss": [r.loss for r in history],
            "train_accuracy": [r.accuracy for r in history],
        }
    final = rows["unaligned"]["train_loss"][-1]
    reach = {
        name: next((i + 1 for i, loss in enumerate(rows[name]["train_loss"]) if loss <= final), None)
        for name in COSTS
    }
    _plot_costs(rows, out / "costs.png")
    _plot_convergence(rows, out / "convergence.png")
    return {"curves": rows, "unaligned_final_loss": final, "epoch_reaching_it": reach}


def _signatures(args, sets, out: Path, a, b) -> dict:
    align_data = DataLoader(sets.align, batch_size=256)
    result = {}
    for name in ("unaligned", "correlation"):
        if not (out / f"curve_{name}.pt").exists():
            raise SystemExit(f"part signatures needs the {name} curve of part costs: run --parts costs first")
        end_b = b if name == "unaligned" else modeconn.align(a, b, align_data).model
        curve, _ = _curve(args, sets, out, a, end_b, name)
        result[name] = {}
        for which, path in (
            ("midpoint", curve),
            ("linear_midpoint", modeconn.Curve(a, end_b, family="linear")),
        ):
            signature = modeconn.align(a, path.model_at(0.5, bn_data=sets.bn), align_data).signature
            print(f"{name} curve: {which} against A\n{signature}", flush=True)
            result[name][which] = signature.to_dict()
    _plot_signatures(result, out / "signatures.png")
    return result


def _multistage(args, sets, out: Path, a, b) -> dict:
    align_data = DataLoader(sets.align, batch_size=256)
    b_aligned = modeconn.align(a, b, align_data).model
    result = {}
    ends = {"correlation": b_aligned, "unaligned": b}
    for name, end_b in ((n, ends[n]) for n in args.multistage_curves.split(",")):
        if not (out / f"curve_{name}.pt").exists():
            raise SystemExit(f"part multistage needs the {name} curve of part costs: run --parts costs first")
        curve, _ = _curve(args, sets, out, a, end_b, name)
        result[name] = _realigned_paths(args, sets, out, a, end_b, curve, name, align_data)
    return result


def _realigned_paths(args, sets, out: Path, a, b, curve, name: str, align_data) -> dict:
    """The path through the curve's midpoint M, and through M re-aligned to each end (A →
    Q_A·M, then Q_B·M → B), as lines and with each half fitted."""
    whole = modeconn.evaluate_curve(curve, sets.test, bn_data=sets.bn, num_points=args.points)
    midpoint = curve.model_at(0.5, bn_data=sets.bn)
    to_a, to_b = modeconn.align(a, midpoint, align_data), modeconn.align(b, midpoint, align_data)
    units = sum(g.size for g in to_a.spec.permutable)

    def moved(result) -> float:
        return sum(int((p != torch.arange(len(p))).sum()) for p in result.perms.values()) / units

    row = {
        "curve": whole.to_dict(),
        "moved_to_a": moved(to_a),
        "moved_to_b": moved(to_b),
        "signature_to_a": to_a.signature.mean(),
        "signature_to_b": to_b.signature.mean(),
    }
    print(
        f"{name} curve: re-aligning its midpoint moved {row['moved_to_a']:.1%} of units toward A, "
        f"{row['moved_to_b']:.1%} toward B",
        flush=True,
    )
    paths = {"through_midpoint": ((a, midpoint), (midpoint, b))}
    if row["moved_to_a"] or row["moved_to_b"]:  # otherwise the re-aligned path is this one
        paths["realigned"] = ((a, to_a.model), (to_b.model, b))
    for path, segments in paths.items():
        reports = []
        for k, (start, end) in enumerate(segments if args.segment_epochs else ()):
            torch.manual_seed(200 + k)
            segment = modeconn.Curve(start, end, family="bezier", num_bends=1)
            print(f"fitting half {k + 1} of the {name} curve's path {path}", flush=True)
            modeconn.fit_curve(
                segment,
                sets.train,
                epochs=args.segment_epochs,
                lr=args.curve_lr,
                lr_step=args.curve_lr_step,
                checkpoint=out / f"half_{name}_{path}_{k}.pt",
                **quiet(),
            )
            reports.append(
                modeconn.evaluate_curve(segment, sets.test, bn_data=sets.bn, num_points=args.points)
            )
        lines = [modeconn.evaluate_line(s, e, args.points, sets.test, sets.bn) for s, e in segments]
        joined = {"lines": modeconn.PathReport.join(lines, path)}
        if reports:
            joined["fitted"] = modeconn.PathReport.join(reports, path)
        row[path] = {k: r.to_dict() for k, r in joined.items()}
        print(f"{name} curve, {path}: {joined['lines']}", flush=True)
    return row


def _subsets(args, sets, out: Path, a, b) -> dict:
    plain = data.cifar10(args.root, train=True, augment=False, verify=args.verify)
    order = torch.randperm(len(plain), generator=torch.Generator().manual_seed(1)).tolist()
    spec = modeconn.discover(a, torch.zeros(2, 3, 32, 32))
    units = sum(g.size for g in spec.permutable)

    def aligned(indices: list[int], label: str):
        t0 = time.time()
        result = modeconn.align(a, b, DataLoader(Subset(plain, indices), batch_size=500), spec=spec)
        line = modeconn.evaluate_line(a, result.model, args.points, sets.test, sets.bn, label=label)
        print(f"{label}: {time.time() - t0:.0f} s, barrier {line.barrier:.3f}", flush=True)
        return result.perms, line

    reference, ref_line = aligned(order, "all 50,000")

    def same(perms, other) -> float:
        return sum(int((perms[g.name] == other[g.name]).sum()) for g in spec.permutable) / units

    rows = [{"images": len(order), "same_as_reference": 1.0, "barrier": ref_line.barrier}]
    for n in (int(s) for s in args.sizes.split(",")):
        perms, line = aligned(order[:n], f"{n} images")
        rows.append({"images": n, "same_as_reference": same(perms, reference), "barrier": line.barrier})
    k = args.disjoint_size
    first, line_1 = aligned(order[-k:], f"{k} images (last)")
    second, line_2 = aligned(order[-2 * k : -k], f"{k} other images")
    disjoint = {
        "images": k,
        "same_as_each_other": same(first, second),
        "same_as_reference": [same(first, reference), same(second, reference)],
        "barriers": [line_1.barrier, line_2.barrier],
    }
    return {"units": units, "sizes": rows, "disjoint": disjoint}


def _summary(out: Path) -> None:
    """Markdown tables of every part done so far."""
    read = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    if "costs" in read:
        c = read["costs"]
        print(
            "\n| alignment | curve: average / minimum accuracy (%) | curve barrier | line barrier | final training loss | first epoch at the unaligned final loss |"
        )
        print("|---|---|---|---|---|---|")
        for name, row in c["curves"].items():
            curve, line = row["curve"], row["line"]
            reach = c["epoch_reaching_it"].get(name, "")
            print(
                f"| {name} | {curve['average_accuracy']:.1f} / {curve['min_accuracy']:.1f} | {curve['barrier']:.3f} "
                f"| {line['barrier']:.3f} | {row['train_loss'][-1]:.4f} | {reach if reach is not None else 'never'} |"
            )
    if "signatures" in read:
        print(
            "\n| curve | midpoint's mean correlation with A, as fitted | after aligning the midpoint to A "
            "| linear initialization's midpoint |"
        )
        print("|---|---|---|---|")

        def mean(sig: dict, key: str) -> float:
            groups = sig["groups"]
            return sum(g["units"] * g[key] for g in groups) / sum(g["units"] for g in groups)

        for name, sigs in read["signatures"].items():
            if isinstance(sigs, dict) and "midpoint" in sigs:
                mid, line = sigs["midpoint"], sigs["linear_midpoint"]
                print(
                    f"| {name} | {mean(mid, 'before'):.3f} | {mean(mid, 'after'):.3f} | {mean(line, 'before'):.3f} |"
                )
    if "subsets" in read:
        sub = read["subsets"]
        print("\n| alignment images | units matched as with all 50,000 | line barrier |")
        print("|---|---|---|")
        for row in sorted(sub["sizes"], key=lambda r: r["images"]):
            print(f"| {row['images']} | {row['same_as_reference']:.1%} | {row['barrier']:.3f} |")
        d = sub["disjoint"]
        print(
            f"\ntwo disjoint sets of {d['images']}: {d['same_as_each_other']:.1%} of units matched alike; "
            f"against all 50,000: {d['same_as_reference'][0]:.1%} and {d['same_as_reference'][1]:.1%}; "
            f"line barriers {d['barriers'][0]:.3f} and {d['barriers'][1]:.3f}"
        )
    if "multistage" in read:
        print(
            "\n| curve | units re-aligning its midpoint moves, toward A / B | path | barrier: one-piece curve "
            "| halves as lines | halves fitted | minimum accuracy: curve / lines / fitted |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, row in read["multistage"].items():
            if not isinstance(row, dict):
                continue
            for path in ("through_midpoint", "realigned"):
                if path not in row:
                    continue
                lines, curve = row[path]["lines"], row["curve"]
                fitted = row[path].get("fitted", {"barrier": float("nan"), "min_accuracy": float("nan")})
                print(
                    f"| {name} | {row['moved_to_a']:.1%} / {row['moved_to_b']:.1%} | {path} | {curve['barrier']:.3f} "
                    f"| {lines['barrier']:.3f} | {fitted['barrier']:.3f} "
                    f"| {curve['min_accuracy']:.1f} / {lines['min_accuracy']:.1f} / {fitted['min_accuracy']:.1f} |"
                )


def _plot_costs(rows: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, row in rows.items():
        for i, key in enumerate(("accuracy", "loss")):
            ax[i].plot(row["curve"]["t"], row["curve"][key], marker="o", ms=3, label=name)
    ax[0].set(xlabel="t", ylabel="test accuracy (%)", title="curves, by alignment cost")
    ax[1].set(xlabel="t", ylabel="test loss")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_convergence(rows: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, row in rows.items():
        ax.plot(range(1, len(row["train_loss"]) + 1), row["train_loss"], marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel="training loss (mean over t ~ U[0,1])", title="curve fitting")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_signatures(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(5 * len(result), 3.6), sharey=True)
    for ax, (name, sigs) in zip(axes, result.items()):
        groups = sigs["midpoint"]["groups"]
        x = range(1, len(groups) + 1)
        ax.plot(x, [g["before"] for g in groups], marker="o", label="midpoint as fitted")
        ax.plot(x, [g["after"] for g in groups], marker="s", label="midpoint aligned to A")
        line = sigs["linear_midpoint"]["groups"]
        ax.plot(x, [g["before"] for g in line], marker="^", ls=":", label="linear initialization's midpoint")
        ax.set(xlabel="layer", title=f"{name} curve: midpoint against A")
    axes[0].set_ylabel("mean correlation of matched units")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
