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


# Okabe & Ito's colour-blind-safe palette (blue, vermillion, bluish green, reddish purple,
# orange, sky blue, yellow, black): distinguishable with every common colour-vision deficiency
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def finish(
    fig: Any,
    path: str | os.PathLike | None,
    *,
    layout: tuple[float, float, float, float] | None = (0, 0, 1, 1),
) -> Any:
    """Lay ``fig`` out within ``layout`` (a rectangle of the figure; ``None`` keeps the layout,
    e.g. for a colour bar shared by several panels), save it to ``path`` when given (PNG, PDF,
    SVG: by the suffix), and return it."""
    if layout is not None:
        fig.tight_layout(rect=layout)
    if path is not None:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def _is_line(report) -> bool:
    return "family" not in report.meta  # evaluate_curve records the curve's family; a line has none


def _colour_key(report) -> str:
    """Reports between the same two models share a colour, a line and a curve alike (the
    models the evaluations record; else labels that differ only by "line" or "curve", e.g.
    "aligned line" and "aligned curve")."""
    if report.meta.get("a") and report.meta.get("b"):
        return f"{report.meta['a']}\n{report.meta['b']}"
    words = [w for w in report.label.split() if w.lower() not in ("line", "curve")]
    return " ".join(words) or report.label


def _zoom_band(reports, key: str) -> tuple[float, float] | None:
    """The band of the paths near the best one (the highest minimum): those whose minimum is
    within 5 points, or three times the best path's own range, of the best minimum — when other
    paths dip below it; ``None`` when one scale shows them all well."""
    values = [r.values(key) for r in reports]
    lows, top = [min(v) for v in values], max(max(v) for v in values)
    best = max(lows)
    near = [low for low in lows if best - low <= max(5.0, 3 * (top - best))]
    if len(near) == len(lows):
        return None
    lower = min(near)
    margin = 0.15 * max(top - lower, 0.5)
    return lower - margin, top + margin


def plot_paths(reports, path: str | os.PathLike | None = None, *, title: str | None = None) -> Any:
    """Accuracy and loss against t for several paths (:class:`~modeconn.PathReport`) on one
    figure, the paper's Fig. 3 (right): straight lines dashed, curves solid, a colour-blind-safe
    palette (a line and a curve with the same label otherwise share a colour). When some paths
    dip far below the others, a second accuracy panel zooms on the band of the best ones. When
    the reports hold robust accuracy too, clean and robust accuracy side by side (Fig. 4).
    ``title`` defaults to the model and dataset the reports name. Saved to ``path`` when given
    (PNG or PDF by the suffix). Returns the figure."""
    robust = all("robust_accuracy" in r.extra for r in reports) and bool(reports)
    panels: list[tuple[str, str, Any]] = [
        ("accuracy", "clean accuracy (%)" if robust else "accuracy (%)", None)
    ]
    zoom = _zoom_band(reports, "accuracy") if reports else None
    if zoom is not None:
        panels.append(("accuracy", "accuracy (%), zoomed", zoom))
    if robust:
        panels.append(("robust_accuracy", "robust accuracy (%)", None))
    panels.append(("loss", "loss", None))
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    colours: dict[str, str] = {}
    for ax, (key, ylabel, band) in zip(axes[0], panels):
        for r in reports:
            colour = colours.setdefault(_colour_key(r), PALETTE[len(colours) % len(PALETTE)])
            ax.plot(
                r.t, r.values(key), color=colour, linestyle="--" if _is_line(r) else "-",
                marker="o", ms=3, label=r.label or None,
            )  # fmt: skip
        ax.set(
            xlabel="t",
            ylabel=ylabel,
            title=f"{ylabel.split(' (')[0]} along the path" + (", zoomed" if band else ""),
        )
        if band is not None:
            ax.set_ylim(*band)
            clipped = [r.label or "a path" for r in reports if min(r.values(key)) < band[0]]
            if clipped:  # say what the zoom leaves out
                ax.text(
                    0.5, 0.02, "below this band: " + ", ".join(clipped), transform=ax.transAxes,
                    ha="center", va="bottom", fontsize="small", color="0.3",
                )  # fmt: skip
        ax.grid(alpha=0.3)
    if any(r.label for r in reports):
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(len(labels), 4),
            frameon=False,
            bbox_to_anchor=(0.5, -0.02),
        )
    fig.suptitle(title if title is not None else _title(reports))
    return finish(fig, path, layout=(0, 0.08 if any(r.label for r in reports) else 0, 1, 1))


def _title(reports) -> str:
    metas = [r.meta for r in reports]
    model = next((m["model"] for m in metas if m.get("model")), None)
    data = next((m["data"] for m in metas if m.get("data")), None)
    return " on ".join(x for x in (model, data) if x) or "loss and accuracy along paths"


def plot_signature(signature, path: str | os.PathLike | None = None, *, title: str | None = None) -> Any:
    """A :class:`~modeconn.CorrelationSignature` as in the paper's Fig. 1a: mean matched
    correlation per group, in network order, before and after alignment; saved to ``path``
    when given. Returns the figure."""
    rows = signature.rows
    fig, ax = pyplot().subplots(figsize=(max(5.5, 0.32 * len(rows) + 2.5), 4.2))
    idx = list(range(len(rows)))
    ax.plot(idx, [r[2] for r in rows], marker="o", color=PALETTE[1], linestyle="--", label="before alignment")
    ax.plot(idx, [r[3] for r in rows], marker="o", color=PALETTE[0], label="after alignment")
    names = [r[0] if len(r[0]) <= 24 else "…" + r[0][-23:] for r in rows]  # the end of a name says the most
    ax.set_xticks(idx, names, rotation=50, ha="right", fontsize=8)
    ax.set(
        xlabel="layer (permutation group, in network order)",
        ylabel="mean correlation of matched units",
        title=title or f"correlation signature ({signature.kind}-activations)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return finish(fig, path)


MAX_STRETCH = 4  # a plane flatter than this is drawn square, and says so


def plot_planes(
    reports, path: str | os.PathLike | None = None, *, value: str = "error", title: str | None = None
) -> Any:
    """:class:`~modeconn.plane.PlaneReport` s side by side on one colour scale (e.g. unaligned
    and aligned; the paper's Fig. 3, top left): test ``value`` (``"error"`` in %, or
    ``"loss"``) over the plane, the control points (θ_A, bend, θ_B) and the curve drawn on it.
    Saved to ``path`` when given. Returns the figure."""
    import numpy as np
    from matplotlib.colors import LogNorm

    if value not in ("error", "loss"):
        raise ValueError(f"value must be 'error' or 'loss', got {value!r}")
    grids = [np.array(r.error if value == "error" else r.loss, dtype=float) for r in reports]
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids])
    low, high = max(float(finite.min()), 1e-3), float(finite.max())
    levels = np.geomspace(low, max(high, low * 1.01), 16)
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(reports), figsize=(5.2 * len(reports) + 0.8, 4.4), squeeze=False, layout="constrained"
    )  # constrained: every panel's y label clear of its neighbour
    for ax, r, g in zip(axes[0], reports, grids):
        contour = ax.contourf(
            r.x, r.y, np.clip(g, low, None), levels=levels, cmap="viridis", norm=LogNorm(low, levels[-1])
        )
        ax.contour(r.x, r.y, np.clip(g, low, None), levels=levels, colors="k", linewidths=0.3, alpha=0.5)
        ax.plot(*zip(*r.curve), color="white", linewidth=2, label="curve")
        for name, (px, py) in r.points.items():
            marker = "o" if name != "bend" else "s"
            ax.plot(px, py, marker, color="white", markeredgecolor="black", ms=7)
            ax.annotate(
                {"A": "θ_A", "B": "θ_B", "bend": "bend"}[name],
                (px, py),
                textcoords="offset points",
                xytext=(6, 6),
                color="white",
            )
        ax.set(title=r.label or "plane", xlabel=r"along $\theta_B - \theta_A$")
        ax.set_ylabel("orthogonal, towards the bend")
        width, height = np.ptp(r.x), np.ptp(r.y)
        if height >= width / MAX_STRETCH:  # to scale: distances on the figure are distances in weight space
            ax.set_aspect("equal", adjustable="box")
        else:  # the bend is often far closer to the line than the end points are apart
            ax.set_box_aspect(1)
            ax.set_ylabel(f"orthogonal, towards the bend\n(not to scale: stretched ×{width / height:.0f})")
    bar = fig.colorbar(contour, ax=list(axes[0]), shrink=0.9)
    bar.set_ticks(levels[::3], labels=[f"{v:.3g}" for v in levels[::3]])
    bar.minorticks_off()
    bar.set_label("test error (%)" if value == "error" else "loss")
    if title:
        fig.suptitle(title)
    return finish(fig, path, layout=None)
