"""Figures, drawn with matplotlib imported on demand, with a backend that works without a display."""

from __future__ import annotations

import os
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot``; the non-interactive Agg backend unless one was chosen already."""
    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def finish(fig: Any, path: str | os.PathLike | None) -> Any:
    """Lay ``fig`` out, save it to ``path`` when given, and return it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_paths(reports, path: str | os.PathLike | None = None) -> Any:
    """Accuracy and loss against t for several paths (:class:`~modeconn.PathReport`) on one
    figure, the paper's Fig. 3 (right); when the reports hold robust accuracy too, clean and
    robust accuracy side by side (the paper's Fig. 4). Saved to ``path`` when given. Returns
    the figure."""
    robust = all("robust_accuracy" in r.extra for r in reports) and bool(reports)
    panels = [("accuracy", "clean accuracy (%)" if robust else "accuracy (%)")]
    if robust:
        panels.append(("robust_accuracy", "robust accuracy (%)"))
    panels.append(("loss", "loss"))
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (key, ylabel) in zip(axes, panels):
        for r in reports:
            ax.plot(r.t, r.values(key), marker="o", ms=3, label=r.label or None)
        ax.set(xlabel="t", ylabel=ylabel, title=f"{ylabel.split(' (')[0]} along the path")
        ax.grid(alpha=0.3)
        if any(r.label for r in reports):
            ax.legend()
    return finish(fig, path)


def plot_signature(signature, path: str | os.PathLike | None = None) -> Any:
    """A :class:`~modeconn.CorrelationSignature` as in the paper's Fig. 1a: mean matched
    correlation per group, in network order, before and after alignment; saved to ``path``
    when given. Returns the figure."""
    rows = signature.rows
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.35 * len(rows) + 2), 3.8))
    idx = list(range(len(rows)))
    ax.plot(idx, [r[2] for r in rows], marker="o", label="before alignment")
    ax.plot(idx, [r[3] for r in rows], marker="o", label="after alignment")
    ax.set_xticks(idx, [r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set(
        ylabel="mean correlation of matched units",
        title=f"correlation signature ({signature.kind}-activations)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return finish(fig, path)
