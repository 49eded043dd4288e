"""Merging and REPAIR on CIFAR-10 (issue 28), at a budget for two CPU cores.

Three questions, each on models trained here from different seeds on a fixed subset of the
CIFAR-10 training set (the paper's augmentation; SGD, momentum 0.9, weight decay 5e-4, a cosine
learning-rate schedule), aligned and merged by correlation on 2,000 plain training images (20%
of the subset), REPAIRed on 2,000 other plain training images, BatchNorm statistics recomputed
on those (or, with ``--bn-data augmented``, on the same images augmented), evaluated on the
first ``--test-size`` test images:

1. REPAIR (Jordan et al., ICLR 2023) on the straight line between two aligned models (part
   ``vgg``), for a network without normalization: VGG11 at a quarter of its width
   (16-32-64-64-128-128-128-128 channels), built here from plain layers because the
   registry's VGG has BatchNorm; and (part ``resnet``) for one with BatchNorm: the registry's
   ResNet20 at half its standard width (8-16-32 channels). Each line is evaluated at
   ``--points`` evenly spaced t: unaligned, aligned, aligned + REPAIR, and for ResNet20 also
   with BatchNorm statistics recomputed at each t ("BN reset"), with and without REPAIR after.
2. Four TinyTens merged (part ``merge``): the naive average of the unaligned models
   (``average_models`` + ``update_bn``), the star merge and MergeMany (``method="mean"``) by
   correlation, and MergeMany by weight matching, each with and without REPAIR, beside the end
   points' mean accuracy; MergeMany's history (units moved per iteration) says whether it
   converged.
3. Garipov et al.'s ensembles (part ``ensemble``): a one-bend Bezier curve fitted between two
   of those TinyTens (B aligned to A); the ensemble of 5 evenly spaced points of the curve
   against the end points' ensemble, each end point alone, and the four TinyTens' ensemble.

Budget (the defaults): 10,000 training images; VGG11/4 for 10 epochs (lr 0.02, the first epoch
at a fifth of it), ResNet20/2 for 8 epochs (lr 0.05), TinyTen for 8 epochs (lr 0.05), the curve
for 4 epochs (lr 0.02); 3,000 test images; 9 points per line (t = 0, 0.125, ..., 1).
Checkpoints in ``--out`` make an interrupted run resumable (run the same command again), and
later runs reuse the trained models. The parts can run as separate processes: each writes its
results into ``<out>.json`` (``--results``), keeping the other parts'; the figure and the tables
are drawn from that file.

    python experiments/merge_cifar.py --root ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

import modeconn
from modeconn.curves.ensemble import Ensemble
from modeconn.merging import average_models
from modeconn.plotting import PALETTE, finish, pyplot

from common import add_data_args, cifar_subsets

VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
PARTS = ("vgg", "resnet", "merge", "ensemble")


class PlainVGG(nn.Module):
    """VGG11 without normalization (REPAIR's VGG11 experiments): 3x3 convolutions with bias
    and ReLU, five max-pools and one linear classifier; ``width`` scales every width."""

    def __init__(self, width: float = 0.25, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = max(1, round(v * width))
                conv = nn.Conv2d(c_in, c_out, 3, padding=1)
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # no norm: keep the signal's scale
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def warmup_cosine(epoch: int, epochs: int) -> float:
    """One epoch at a fifth of the rate (a network without normalization diverges at full rate
    from its initialization), then a cosine decay over the remaining epochs."""
    if epoch == 0:
        return 0.2
    return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(1, epochs - 1)))


def train(make, seed: int, train_set, epochs: int, lr: float, checkpoint: Path, schedule="cosine"):
    torch.manual_seed(seed)
    model = make()
    settings = modeconn.Settings(lr=lr, schedule=schedule, batch_size=128)
    t0 = time.time()
    history = modeconn.train_model(
        model, train_set, epochs=epochs, settings=settings, checkpoint=checkpoint, progress=False,
        callbacks=[lambda s: print(f"    {s.history[-1]}", flush=True)],
    )  # fmt: skip
    print(f"  {checkpoint.stem}: {time.time() - t0:.0f}s: {history[-1]}", flush=True)
    return model


def at(report: modeconn.PathReport, t: float) -> dict:
    i = min(range(len(report.t)), key=lambda k: abs(report.t[k] - t))
    return {"t": report.t[i], "accuracy": report.accuracy[i], "loss": report.loss[i]}


def reduction(before: float, after: float) -> float:
    """How much of the barrier ``before`` is gone ``after``, in %."""
    return 100.0 * (before - after) / before if before > 0 else float("nan")


class Data:
    """The loaders: ``align`` (alignment and merging), ``repair`` (REPAIR; never augmented:
    the references and the model are measured in separate passes), ``bn`` (BatchNorm
    recomputation), ``test``, and the augmented ``train`` set."""

    def __init__(self, args):
        sets = cifar_subsets(args)
        self.train, self.test = sets.train, sets.test
        self.align = DataLoader(sets.align, batch_size=256)
        self.repair = sets.bn
        # the same 2,000 images as `repair`, augmented afresh at every pass
        self.bn = (
            DataLoader(Subset(sets.train, range(2000)), batch_size=256)
            if args.bn_data == "augmented"
            else sets.bn
        )


def pair_experiment(name, make, args, data: Data, out: Path, epochs, lr, schedule, bn: bool) -> dict:
    print(f"\n== {name}: two models, the line between them", flush=True)
    t0 = time.time()
    slug = name.split(" ")[0].replace("/", "-").lower()  # "VGG11/4 (no norm)" -> "vgg11-4"
    a, b = (
        train(make, seed, data.train, epochs, lr, out / f"{slug}_{k}.pt", schedule)
        for k, seed in (("a", 1), ("b", 2))
    )
    t_train = time.time() - t0
    found = modeconn.align(a, b, data.align)
    b_al = found.model
    ts, test = args.points, data.test
    t0 = time.time()
    lines = {
        "unaligned": modeconn.evaluate_line(a, b, ts, test, label="unaligned"),
        "aligned": modeconn.evaluate_line(a, b_al, ts, test, label="aligned"),
        "aligned + REPAIR": modeconn.evaluate_line(
            a, b_al, ts, test, repair=True, repair_data=data.repair, label="aligned + REPAIR"
        ),
    }
    if bn:
        lines["unaligned + BN reset"] = modeconn.evaluate_line(
            a, b, ts, test, bn_data=data.bn, label="unaligned + BN reset"
        )
        lines["aligned + BN reset"] = modeconn.evaluate_line(
            a, b_al, ts, test, bn_data=data.bn, label="aligned + BN reset"
        )
        lines["aligned + BN reset + REPAIR"] = modeconn.evaluate_line(
            a,
            b_al,
            ts,
            test,
            bn_data=data.bn,
            repair=True,
            repair_data=data.repair,
            label="aligned + BN reset + REPAIR",
        )
    else:
        lines["unaligned + REPAIR"] = modeconn.evaluate_line(
            a, b, ts, test, repair=True, repair_data=data.repair, label="unaligned + REPAIR"
        )
    t_eval = time.time() - t0
    for r in lines.values():
        print(r, flush=True)
    # the midpoint repaired by modeconn.repair directly, as a user would
    mid = average_models([a, b_al], [0.5, 0.5])
    if bn:
        modeconn.update_bn(mid, data.bn)
    mid_loss0, mid_acc0 = modeconn.evaluate(mid, test)
    modeconn.repair(mid, [a, b_al], data.repair)
    mid_loss, mid_acc = modeconn.evaluate(mid, test)
    base = "aligned + BN reset" if bn else "aligned"
    row = {
        "architecture": name,
        "parameters": sum(p.numel() for p in a.parameters()),
        "seconds": {"train": round(t_train), "evaluate": round(t_eval)},
        "end_points": [lines["unaligned"].accuracy[0], lines["unaligned"].accuracy[-1]],
        "correlation_before_after": found.signature.mean() if found.signature is not None else None,
        "midpoint": {k: at(r, 0.5) for k, r in lines.items()},
        "barrier": {k: r.barrier for k, r in lines.items()},
        "barrier_reduction_vs_aligned_%": {
            k: reduction(lines["aligned"].barrier, r.barrier) for k, r in lines.items() if k != "aligned"
        },
        "barrier_reduction_of_repair_vs_%s_%%" % base.replace(" ", "_"): reduction(  # noqa: UP031
            lines[base].barrier, lines[base + " + REPAIR"].barrier
        ),
        "midpoint_by_modeconn_repair": {
            "before": {"accuracy": mid_acc0, "loss": mid_loss0},
            "after": {"accuracy": mid_acc, "loss": mid_loss},
        },
        "lines": {k: r.to_dict() for k, r in lines.items()},
    }
    print(
        f"{name}: end points {row['end_points'][0]:.1f}% / {row['end_points'][1]:.1f}%, lines evaluated in "
        f"{t_eval:.0f}s; modeconn.repair at t = 0.5: {mid_acc0:.1f}% -> {mid_acc:.1f}%",
        flush=True,
    )
    return row


def tinytens(args, data: Data, out: Path) -> list[nn.Module]:
    make = lambda: modeconn.create_model("tinyten", num_classes=10)  # noqa: E731
    return [
        train(make, 10 + k, data.train, args.tinyten_epochs, args.tinyten_lr, out / f"tinyten_{k}.pt")
        for k in range(args.merge_models)
    ]


def merge_experiment(args, data: Data, out: Path) -> dict:
    print(f"\n== {args.merge_models} TinyTens merged", flush=True)
    t0 = time.time()
    models = tinytens(args, data, out)
    t_train = time.time() - t0
    n, test = len(models), data.test
    ends = [modeconn.evaluate(m, test) for m in models]
    ends_reset = []
    for m in models:
        m = modeconn.update_bn(copy.deepcopy(m), data.bn)
        ends_reset.append(modeconn.evaluate(m, test))
    for (_, acc0), (_, acc) in zip(ends, ends_reset):
        print(f"  end point {acc0:.2f}%, with its BatchNorm statistics recomputed {acc:.2f}%", flush=True)
    rows: dict[str, dict] = {}

    def record(label, model, seconds=None):
        loss, acc = modeconn.evaluate(model, test)
        rows[label] = {"accuracy": acc, "loss": loss, "seconds": seconds}
        print(f"  {label}: {acc:.2f}% (loss {loss:.3f})", flush=True)

    naive = modeconn.update_bn(average_models(models, [1 / n] * n), data.bn)
    record("naive average", naive)
    record("naive average + REPAIR", modeconn.repair(naive, models, data.repair))
    merges = {}
    for method, cost in (("star", "correlation"), ("mean", "correlation"), ("mean", "weight_matching")):
        label = method if cost == "correlation" else f"{method} ({cost.replace('_', ' ')})"
        t0 = time.time()
        result = modeconn.merge(
            models, data.align, method=method, cost=cost, repair=True, bn_data=data.bn,
            max_iterations=args.max_iterations,
        )  # fmt: skip
        seconds = time.time() - t0
        print(result, flush=True)
        # merge(repair=False) is this same average before REPAIR: recomputed from the aligned
        # models rather than aligned again
        record(label, modeconn.update_bn(average_models(result.aligned, result.weights), data.bn))
        record(f"{label} + REPAIR", result.model, round(seconds))
        merges[label] = {"history": result.history, "notes": result.notes}
    return {
        "train_seconds": round(t_train),
        "end_points": [{"accuracy": acc, "loss": loss} for loss, acc in ends],
        "end_points_mean_accuracy": sum(acc for _, acc in ends) / n,
        "end_points_mean_loss": sum(loss for loss, _ in ends) / n,
        "end_points_bn_reset": [{"accuracy": acc, "loss": loss} for loss, acc in ends_reset],
        "merged": rows,
        "merge": merges,
    }


def ensemble_experiment(args, data: Data, out: Path) -> dict:
    print("\n== ensembles along a curve", flush=True)
    models = tinytens(args, data, out)
    a, b = models[0], models[1]
    b_al = modeconn.align(a, b, data.align).model
    torch.manual_seed(100)
    curve = modeconn.Curve(a, b_al, family="bezier", num_bends=1)
    t0 = time.time()
    modeconn.fit_curve(
        curve, data.train, epochs=args.curve_epochs, lr=args.curve_lr, schedule="cosine",
        checkpoint=out / "tinyten_curve.pt", progress=False,
        callbacks=[lambda s: print(f"    {s.history[-1]}", flush=True)],
    )  # fmt: skip
    t_curve = time.time() - t0
    rows = {}

    def record(label, model):
        loss, acc = modeconn.evaluate(model, data.test)
        rows[label] = {"accuracy": acc, "nll": loss}
        print(f"  {label}: {acc:.2f}%, NLL {loss:.4f}", flush=True)

    record("end point A", a)
    record("end point B", b)
    record("curve at t = 0.5", curve.model_at(0.5, bn_data=data.bn))
    record(
        "end points' ensemble, curve_ensemble(curve, [0, 1])",
        modeconn.curve_ensemble(curve, [0, 1], bn_data=data.bn),
    )
    record(
        f"curve ensemble, {args.ensemble_points} points",
        modeconn.curve_ensemble(curve, args.ensemble_points, bn_data=data.bn),
    )
    record(f"{len(models)} TinyTens' ensemble (own statistics)", Ensemble(models).eval())
    return {"curve_seconds": round(t_curve), "ensembles": rows}


STYLE = {  # label: (colour, linestyle, line width); the BN reset line is drawn wide, under the REPAIR lines it may coincide with
    "unaligned": (PALETTE[1], "--", 1.5),
    "aligned": (PALETTE[0], "--", 1.5),
    "aligned + REPAIR": (PALETTE[2], "-", 1.5),
    "aligned + BN reset": (PALETTE[3], "-", 5.0),
    "aligned + BN reset + REPAIR": (PALETTE[4], ":", 2.0),
    "unaligned + BN reset": (PALETTE[5], ":", 1.5),
    "unaligned + REPAIR": (PALETTE[5], ":", 1.5),
}
COLUMNS = ("unaligned", "aligned", "aligned + REPAIR", "aligned + BN reset", "aligned + BN reset + REPAIR")


def figure(pairs: list[dict], path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 3.6 * len(pairs)), squeeze=False)
    for row, pair in zip(axes, pairs):
        for label, r in pair["lines"].items():
            colour, ls, lw = STYLE.get(label, ("0.5", "-", 1.5))
            for ax, key in zip(row, ("accuracy", "loss")):
                ax.plot(
                    r["t"], r[key], color=colour, linestyle=ls, linewidth=lw, alpha=0.5 if lw > 2 else 1.0,
                    marker="o", ms=3, label=label, zorder=1 if lw > 2 else 2,
                )  # fmt: skip
        for ax, key in zip(row, ("test accuracy (%)", "test loss")):
            ax.set(
                xlabel="t", ylabel=key, title=f"{pair['architecture']}: {key.split(' (')[0]} along the line"
            )
            ax.grid(alpha=0.3)
        row[1].legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    finish(fig, path)


def print_tables(results: dict) -> None:
    pairs = list(results.get("pairs", {}).values())
    if pairs:
        print("\n| t = 0.5: test accuracy % / loss | end points | " + " | ".join(COLUMNS) + " |")
        print("|---|---|" + "---|" * len(COLUMNS))
        for r in pairs:
            cells = [
                f"{r['midpoint'][k]['accuracy']:.1f} / {r['midpoint'][k]['loss']:.3f}"
                if k in r["midpoint"]
                else "—"
                for k in COLUMNS
            ]
            ends = f"{r['end_points'][0]:.1f} / {r['end_points'][1]:.1f}"
            print(f"| {r['architecture']} | {ends} | " + " | ".join(cells) + " |")
        print("\n| loss barrier | " + " | ".join(COLUMNS) + " | REPAIR's reduction of the barrier |")
        print("|---|" + "---|" * len(COLUMNS) + "---|")
        for r in pairs:
            cells = [f"{r['barrier'][k]:.3f}" if k in r["barrier"] else "—" for k in COLUMNS]
            red = [
                f"{v:.0f}% ({k.split('_vs_')[1][:-2].replace('_', ' ')})"
                for k, v in r.items()
                if k.startswith("barrier_reduction_of")
            ]
            print(f"| {r['architecture']} | " + " | ".join(cells) + f" | {red[0]} (paper: 60–100%) |")
    if "merge" in results:
        m = results["merge"]
        print(f"\n| {len(m['end_points'])} TinyTens | test accuracy % | loss |")
        print("|---|---|---|")
        print(
            f"| end points (mean) | {m['end_points_mean_accuracy']:.2f} | {m['end_points_mean_loss']:.3f} |"
        )
        for k, v in m["merged"].items():
            print(f"| {k} | {v['accuracy']:.2f} | {v['loss']:.3f} |")
        for method, h in m["merge"].items():
            print(
                f"{method}: units moved per iteration {[x['moved'] for x in h['history']]}; notes: {h['notes']}"
            )
    if "ensemble" in results:
        print("\n| TinyTen | test accuracy % | NLL |")
        print("|---|---|---|")
        for k, v in results["ensemble"]["ensembles"].items():
            print(f"| {k} | {v['accuracy']:.2f} | {v['nll']:.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(p, train_size=10000, test_size=3000)
    p.add_argument("--vgg-width", type=float, default=0.25)
    p.add_argument("--vgg-epochs", type=int, default=10)
    p.add_argument("--vgg-lr", type=float, default=0.02)
    p.add_argument("--resnet-width", type=int, default=8)
    p.add_argument("--resnet-epochs", type=int, default=8)
    p.add_argument("--resnet-lr", type=float, default=0.05)
    p.add_argument("--tinyten-epochs", type=int, default=8)
    p.add_argument("--tinyten-lr", type=float, default=0.05)
    p.add_argument("--merge-models", type=int, default=4)
    p.add_argument("--max-iterations", type=int, default=10, help="MergeMany's")
    p.add_argument("--curve-epochs", type=int, default=4)
    p.add_argument("--curve-lr", type=float, default=0.02)
    p.add_argument("--ensemble-points", type=int, default=5)
    p.add_argument("--points", type=int, default=9)
    p.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to run")
    p.add_argument(
        "--bn-data",
        choices=("plain", "augmented"),
        default="plain",
        help="the images BatchNorm statistics are recomputed on: the 2,000 plain training images REPAIR "
        "uses, or the same images with the training augmentation (as the running statistics were gathered)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/out/merge_cifar", help="checkpoints")
    p.add_argument("--results", default=None, help="the JSON file (default <out>.json)")
    p.add_argument("--figure", default="docs/img/merging_repair.png")
    p.add_argument("--replot", action="store_true", help="only draw the figure and print the tables again")
    args = p.parse_args()
    path = Path(args.results or f"{args.out}.json")
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")

    if not args.replot:
        torch.set_num_threads(args.threads)
        start = time.time()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = Data(args)
        results: dict = {}
        if "vgg" in parts:
            name = f"VGG11/{round(1 / args.vgg_width)} (no norm)" if args.vgg_width < 1 else "VGG11 (no norm)"
            make = lambda: PlainVGG(args.vgg_width)  # noqa: E731
            row = pair_experiment(
                name, make, args, data, out, args.vgg_epochs, args.vgg_lr, warmup_cosine, bn=False
            )
            results.setdefault("pairs", {})["vgg"] = {**row, "args": vars(args)}
        if "resnet" in parts:
            name = "ResNet20" + (
                f"/{16 // args.resnet_width}" if args.resnet_width < 16 else f" (width {args.resnet_width})"
            )
            make = lambda: modeconn.create_model("resnet20", num_classes=10, width=args.resnet_width)  # noqa: E731
            row = pair_experiment(
                name, make, args, data, out, args.resnet_epochs, args.resnet_lr, "cosine", bn=True
            )
            results.setdefault("pairs", {})["resnet"] = {**row, "args": vars(args)}
        if "merge" in parts:
            results["merge"] = {**merge_experiment(args, data, out), "args": vars(args)}
        if "ensemble" in parts:
            results["ensemble"] = {**ensemble_experiment(args, data, out), "args": vars(args)}
        saved = (
            json.loads(path.read_text()) if path.is_file() else {}
        )  # another part's process may have written it
        saved.setdefault("pairs", {}).update(results.pop("pairs", {}))
        saved.update(results)
        saved.setdefault("wall_seconds", {})[args.parts] = round(time.time() - start)
        path.write_text(json.dumps(saved, indent=1, default=str))
        print(f"\nwall time {saved['wall_seconds'][args.parts]}s", flush=True)
    results = json.loads(path.read_text())
    pairs = [results["pairs"][k] for k in ("vgg", "resnet") if k in results.get("pairs", {})]
    if pairs and args.figure:
        figure(pairs, args.figure)
    print_tables(results)


if __name__ == "__main__":
    main()
