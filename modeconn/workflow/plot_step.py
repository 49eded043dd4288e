"""``modeconn plot``: figures of what evaluate run folders saved, without recomputing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, refuse_overwriting

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def plot(
    runs: list[str],
    out: str | os.PathLike,
    *,
    quiet: bool = False,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Figures of what the ``evaluate`` run folders ``runs`` saved, without recomputing: the
    paths on one figure and, when runs hold a plane (``evaluate --plane``), the planes side by
    side. ``out`` is a run folder (``paths.png`` and ``.pdf``, ``plane.png`` and ``.pdf``,
    ``config.toml``, ``results.json``, ``log.txt``) or, with a figure suffix (``.png``,
    ``.pdf``, ``.svg``), one file (the planes beside it as ``<name>-plane<suffix>``).
    ``labels`` renames paths in the legend: ``{run as given: name}``."""
    from modeconn.path_report import PathReport
    from modeconn.plane import PlaneReport
    from modeconn.plotting import plot_planes

    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(runs))
    if unknown:
        raise InvalidArgumentError(
            f"--label names {', '.join(map(repr, unknown))}, which is not one of the runs plotted"
        )
    out = Path(out)
    folder = out.suffix.lower() not in FIGURE_SUFFIXES
    inputs = {f"{i + 1}": r for i, r in enumerate(runs)}
    refuse_overwriting(out, inputs)
    config = {"runs": [os.path.abspath(r) for r in runs], "title": title, "labels": labels}
    if folder:
        RunFolder.check(out, "plot", config, restart=restart)
    reports, planes = [], []
    for given in runs:
        path = Path(given) / "evaluation.json" if Path(given).is_dir() else Path(given)
        if not path.is_file() or path.suffix != ".json":
            raise InvalidArgumentError(
                f"{given!r} holds no evaluation.json: run `modeconn evaluate` into it first"
            )
        report = PathReport.from_dict(json.loads(path.read_text()))
        report.label = labels.get(given, report.label)
        reports.append(report)
        if (path.parent / "plane.json").is_file():
            plane = PlaneReport.from_dict(json.loads((path.parent / "plane.json").read_text()))
            plane.label = labels.get(given, plane.label)
            planes.append(plane)
    if folder:
        run = RunFolder(out)
        run.write_config({"command": "plot", "plot": config})
        targets = [(run / "paths", s) for s in (".png", ".pdf")]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        targets = [(out.with_suffix(""), out.suffix)]
    figures = []
    for stem, suffix in targets:
        figures.append(stem.with_name(stem.name + suffix))
        PathReport.plot(reports, figures[-1], title=title)
        if planes:
            name = "plane" if folder else stem.name + "-plane"
            figures.append(stem.with_name(name + suffix))
            names = (planes[0].meta.get("model"), planes[0].meta.get("data"))
            plot_planes(planes, figures[-1], title=title or " on ".join(x for x in names if x))
    results = {"figures": [os.fspath(f) for f in figures], "paths": len(reports), "planes": len(planes)}
    summary = f"{len(reports)} path(s), {len(planes)} plane(s) -> {', '.join(os.fspath(f) for f in figures)}"
    if folder:
        run.write_json("results.json", results)
        run.set_state("complete")
        run.log(summary)
    if not quiet:
        print(summary)
    return results
