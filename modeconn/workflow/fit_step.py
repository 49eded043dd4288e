"""``modeconn fit``: a curve between A and B, fitted into a run folder; and the curve a fit run
saved, as the steps that read one load it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeconn.runs import RunFolder, describe_state, run_state
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng, _seed
from modeconn.workflow.settings import _settings
from modeconn.workflow.steps import (
    _check_finite,
    _device,
    _history_rows,
    _model,
    _open,
    _prepare,
    _progress,
    _say,
    _training,
)


def _curve(cfg: Mapping[str, Any], data: Any) -> Any:
    from modeconn.curves import Curve

    a, b = _model(cfg["a"], data, "A"), _model(cfg["b"], data, "B")
    return Curve(a, b, family=cfg["family"], num_bends=cfg["num_bends"], share=True)  # loaded for it alone


@_keeps_caller_rng
def fit(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Fit a curve between A and B with an optimizer plugin: ``out/curve.pt`` (resumable)."""
    cfg, changes = _prepare("fit", config, out, restart)
    _fork_rng()
    from modeconn.training import fit_curve, optimizer_options

    optimizer_options(cfg["optimizer"], cfg["options"])

    device = _device(cfg)
    data = _open(cfg)
    _seed(cfg)
    curve = _curve(cfg, data)
    settings = _settings(cfg)
    run = RunFolder(out)
    run.write_config({"command": "fit", "fit": cfg})
    history = _training(
        run,
        cfg["epochs"],
        changes,
        lambda: fit_curve(
            curve,
            data.train,
            optimizer=cfg["optimizer"],
            epochs=cfg["epochs"],
            settings=settings,
            device=device,
            checkpoint=run / "curve.pt",
            callbacks=[_progress(run, "fit")],
            progress=not quiet,
            **dict(cfg["options"]),
        ),
    )
    results: dict[str, Any] = {"history": _history_rows(history)}
    if "perms" in history.summary:  # pam
        results["perms"] = {g: p.tolist() for g, p in history.summary["perms"].items()}
    last = history[-1] if history else None
    results["summary"] = (
        f"fitted a {cfg['family']} curve ({cfg['optimizer']}, {cfg['epochs']} epoch{'s' * (cfg['epochs'] != 1)})"
        + (f": training loss {last.loss:.4f}, accuracy {last.accuracy:.2f}%" if last else "")
        + f" -> {run.path}"
    )
    run.write_json("results.json", results)
    run.write_csv("results.csv", results["history"])
    _say(run, quiet, results["summary"])
    return results


def _saved_curve(folder: str, fit_cfg: Mapping[str, Any], data: Any) -> tuple[Any, dict[str, Any]]:
    """The curve the fit run ``folder`` saved, as of its last saved epoch (with a warning when
    the run is not complete), and what the evaluation records of the run: its folder, its state
    and that epoch."""
    from modeconn.training import load_checkpoint

    recorded = run_state(folder)
    curve = _curve(fit_cfg, data)
    saved = load_checkpoint(curve, Path(folder) / "curve.pt")
    epoch = int(saved.get("epoch", 0)) if isinstance(saved, Mapping) else None
    if recorded["state"] not in ("complete", "unknown"):
        import warnings

        warnings.warn(
            f"{folder!r} is {describe_state(recorded)}: evaluating its curve as of epoch {epoch}",
            stacklevel=3,
        )
    _check_finite(curve, f"the curve of {folder!r}")
    return curve, {"run": folder, "run_state": recorded["state"], "curve_epoch": epoch}
