"""``modeconn demo``: the whole method on the embedded digits, offline, in about a minute.

Two TinyTens trained from different seeds; B aligned to A by correlation; an unaligned and an
aligned quadratic Bezier curve fitted; both curves and both straight lines evaluated with
BatchNorm recomputed at each t. Prints a table and writes plots, reports and the models.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from modeconn.alignment import AlignResult, align
from modeconn.curves import Curve, evaluate_curve
from modeconn.data import DATASETS, alignment_subset, digits
from modeconn.metrics import evaluate
from modeconn.path_report import PathReport, evaluate_line
from modeconn.registry import create_model
from modeconn.training import fit_curve, save_checkpoint, train_model

__all__ = ["DemoSettings", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains; the defaults take about a minute on two CPU cores."""

    model: str = "tinyten"
    seed: int = 0
    epochs: int = 10
    lr: float = 0.05
    lr_step: int = 4  # halve the lr every 4 epochs: the end points settle before BN statistics are kept
    curve_epochs: int = 5
    curve_lr: float = 0.02
    num_points: int = 11


@dataclass
class DemoResult:
    """What :func:`run_demo` measured; :meth:`table` is what ``modeconn demo`` prints."""

    accuracy_a: float
    accuracy_b: float
    alignment: AlignResult
    reports: dict[str, PathReport]  # "unaligned curve", "aligned curve", "unaligned line", "aligned line"
    seconds: float

    def table(self) -> str:
        rows = [
            f"end points: test accuracy A {self.accuracy_a:.2f}%, B {self.accuracy_b:.2f}% (their own BatchNorm statistics)",
            "along the paths, BatchNorm statistics are recomputed at each of the points, end points included:",
            "",
            f"  {'path':<16} {'avg acc %':>9} {'min acc %':>9} {'loss barrier':>12}",
        ]
        for name, r in self.reports.items():
            rows.append(f"  {name:<16} {r.average_accuracy:>9.2f} {r.min_accuracy:>9.2f} {r.barrier:>12.4f}")
        before, after = self.alignment.signature.mean()
        rows += ["", f"mean matched correlation: {before:.3f} before alignment, {after:.3f} after"]
        return "\n".join(rows)


def run_demo(
    out: str | Path = "modeconn-demo", settings: DemoSettings = DemoSettings(), *, progress: bool = True
) -> DemoResult:
    """Run the demo and write its outputs into ``out`` (created if needed)."""
    began = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = settings
    info = DATASETS["digits"]
    train = digits(train=True, augment=False)
    test = DataLoader(digits(train=False), batch_size=256)
    plain = alignment_subset(train, fraction=0.2, seed=s.seed)  # the paper aligns on 20% of the training set
    bn = DataLoader(train, batch_size=256)

    ends = []
    for k in range(2):
        torch.manual_seed(s.seed * 100 + k + 1)  # the two end points differ only by their seed
        model = create_model(s.model, num_classes=info.num_classes, in_chans=info.in_chans)
        train_model(
            model, train, epochs=s.epochs, lr=s.lr, lr_step=s.lr_step, batch_size=64, progress=progress
        )
        save_checkpoint(model, out / f"model_{'ab'[k]}.safetensors")
        ends.append(model)
    a, b = ends
    result = align(a, b, DataLoader(plain, batch_size=256))
    result.signature.plot(out / "correlation_signature.png")

    reports: dict[str, PathReport] = {}
    for name, end_b in (("unaligned", b), ("aligned", result.model)):
        torch.manual_seed(s.seed * 100 + 10)
        curve = Curve(a, end_b, family="bezier", num_bends=1)
        fit_curve(curve, train, epochs=s.curve_epochs, lr=s.curve_lr, batch_size=64, progress=progress)
        save_checkpoint(curve, out / f"curve_{name}.safetensors")
        reports[f"{name} curve"] = evaluate_curve(
            curve, test, bn_data=bn, num_points=s.num_points, label=f"{name} curve", progress=progress
        )
    for name, end_b in (("unaligned", b), ("aligned", result.model)):
        reports[f"{name} line"] = evaluate_line(
            a, end_b, s.num_points, test, bn, label=f"{name} line", progress=progress
        )
    PathReport.plot(list(reports.values()), out / "curves.png", title=f"{s.model} on the embedded digits")

    demo = DemoResult(
        evaluate(a, test)[1], evaluate(b, test)[1], result, reports, time.perf_counter() - began
    )
    summary = {
        "settings": s.__dict__,
        "accuracy_a": demo.accuracy_a,
        "accuracy_b": demo.accuracy_b,
        "signature": result.signature.to_dict(),
        "paths": {k: r.to_dict() for k, r in reports.items()},
        "seconds": demo.seconds,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return demo
