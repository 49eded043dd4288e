"""``modeconn evaluate``: the curve of a fit run (with its plane), the line between two models,
or the one model of a merge run, measured into a run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, read_config, run_folder_of, run_state
from modeconn.workflow.fit_step import _saved_curve
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng
from modeconn.workflow.settings import resolved
from modeconn.workflow.steps import (
    _bn_samples,
    _data_name,
    _model,
    _open,
    _prepare,
    _say,
)


def _pairing(cfg: Mapping[str, Any]) -> str:
    """``"aligned"`` when model B is the output of ``modeconn align`` (of A), else ``"unaligned"``."""
    folder = run_folder_of(cfg["b"])
    return "aligned" if folder is not None and read_config(folder).get("command") == "align" else "unaligned"


def _fit_run_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config of the ``fit`` (or ``merge``) run folder that ``config`` evaluates (its
    ``run``), or ``None`` for a line (its ``line``); one error when it names neither, or a
    folder no fit or merge made."""
    if config.get("run"):
        source = read_config(config["run"])
        if source.get("command") not in ("fit", "merge"):
            raise InvalidArgumentError(
                f"{config['run']!r} is not a `modeconn fit` run folder (nor a `modeconn merge` one); "
                "to evaluate a line pass --line A B"
            )
        return source
    if not config.get("line"):
        raise InvalidArgumentError("evaluate needs a fit run folder (RUN) or --line A B")
    return None


def _check_evaluated(cfg: Mapping[str, Any]) -> None:
    """``cfg`` evaluates a curve or a line, not both, and a plane only of a curve."""
    if cfg.get("run") and cfg.get("line"):
        raise InvalidArgumentError("evaluate takes a fit run folder (RUN) or --line A B, not both")
    if cfg.get("line") and cfg["plane"]:
        raise InvalidArgumentError(
            "--plane needs a curve (a `modeconn fit` run folder): a line spans no plane"
        )


def _fit_settings(cfg: Mapping[str, Any], source: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fit settings of what ``cfg`` evaluates, on its data: those of the fit run whose
    config is ``source``, or for a line fit's defaults with its two models as A and B."""
    data_cfg = {k: cfg[k] for k in ("data", "data_root")}
    if cfg.get("run"):
        return resolved("fit", source["fit"]) | data_cfg
    return resolved("fit", {"a": cfg["line"][0], "b": cfg["line"][1]}) | data_cfg


def _evaluation_loaders(cfg: Mapping[str, Any], data: Any) -> tuple[Any, Any]:
    """Loaders of what a path is measured on (the test set, or ``test_samples`` of it) and of
    the ``bn_samples`` training samples its BatchNorm statistics are recomputed on."""
    import torch

    from modeconn.data import alignment_subset

    bn = _bn_samples(data, cfg["bn_samples"])
    test = data.test
    if cfg["test_samples"]:
        test = alignment_subset(test, num_samples=min(int(cfg["test_samples"]), len(test)), seed=0)
    loader = torch.utils.data.DataLoader(test, batch_size=cfg["batch_size"])
    bn_loader = torch.utils.data.DataLoader(bn, batch_size=cfg["batch_size"])
    return loader, bn_loader


def _save_plane(
    run: RunFolder,
    curve: Any,
    loader: Any,
    bn_data: Any,
    label: str,
    cfg: Mapping[str, Any],
    fit_cfg: Mapping[str, Any],
    data: Any,
    quiet: bool,
) -> None:
    """The plane of ``curve`` on a grid of ``cfg["plane"]``: ``plane.json`` and ``plane.png``."""
    from modeconn.plane import plane
    from modeconn.plotting import plot_planes
    from modeconn.resolve import model_spec

    grid = plane(curve, loader, bn_data, grid=int(cfg["plane"]), label=label, progress=not quiet)
    grid.meta.update(data=_data_name(data), model=model_spec(fit_cfg["a"], data).arch)
    if run.main:
        grid.save(run / "plane.json")
        plot_planes([grid], run / "plane.png", title=f"{grid.meta['model']} on {grid.meta['data']}")


def _evaluation_summary(report: Any, bn_samples: int, path: Any) -> str:
    """The line ``evaluate`` ends with: the path's accuracy and loss barrier."""
    recomputed = report.meta.get("bn_recomputed") or report.meta.get("bn_data", "none") != "none"
    return (
        f"{report.label}: accuracy {report.accuracy[0]:.2f}% -> min {report.min_accuracy:.2f}% -> "
        f"{report.accuracy[-1]:.2f}%, loss barrier {report.barrier:.4f}"
        + (
            f" (BatchNorm statistics recomputed at each t on {bn_samples} training samples)"
            if recomputed
            else ""
        )
        + f" -> {path}"
    )


def _save_evaluation(
    run: RunFolder,
    report: Any,
    fit_cfg: Mapping[str, Any],
    data: Any,
    fit_run: Mapping[str, Any],
    bn_samples: int,
    quiet: bool,
) -> dict[str, Any]:
    """``report`` with what was evaluated (data, model, A and B, and ``fit_run``: the fit run's
    folder, state and epoch), saved (``evaluation.json`` and ``.csv``, ``path.png``,
    ``results.json``) and summarized; the results."""
    from modeconn.path_report import PathReport
    from modeconn.resolve import model_spec

    arch = model_spec(fit_cfg["a"], data).arch
    report.meta.update(data=_data_name(data), model=arch, a=fit_cfg["a"], b=fit_cfg["b"], **fit_run)
    if run.main:
        report.save(run / "evaluation.json")
        report.save(run / "evaluation.csv")
        PathReport.plot([report], run / "path.png")
    results = report.to_dict()
    results["summary"] = _evaluation_summary(report, bn_samples, run.path)
    run.write_json("results.json", results)
    run.set_state("complete")
    _say(run, quiet, results["summary"])
    return results


@_keeps_caller_rng
def evaluate(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Evaluate the curve of a ``fit`` run folder (``run``), or the straight line between the
    models ``a`` and ``b`` (``line``), with BatchNorm recomputed at each t: ``evaluation.json``
    and ``.csv`` and ``path.png``; with ``plane`` (a grid size), ``plane.json`` and ``plane.png``.
    A fit that is not complete is evaluated as of its last saved epoch, with a warning; the
    epoch is recorded. The folder of a ``merge`` run (``run``) is one model: its test loss and
    accuracy go to ``results.json``."""
    source = _fit_run_config(config)
    if source is not None and source.get("command") == "merge":
        return _evaluate_model(config, out, quiet=quiet, restart=restart)
    cfg, _ = _prepare("evaluate", config, out, restart)
    _check_evaluated(cfg)
    _fork_rng()
    import torch

    from modeconn import distributed
    from modeconn.batchnorm import has_batchnorm
    from modeconn.metrics import Classification
    from modeconn.path_report import evaluate_line

    fit_cfg = _fit_settings(cfg, source)
    device = distributed.current().device(cfg["device"])
    data = _open(cfg)
    torch.manual_seed(0)
    loader, bn_loader = _evaluation_loaders(cfg, data)
    metrics: list[Any] = [Classification()]
    fit_run: dict[str, Any] = {}
    if cfg.get("run"):
        from modeconn.curves import evaluate_curve

        curve, fit_run = _saved_curve(cfg["run"], fit_cfg, data)
        curve.to(device)
        label = cfg["label"] or f"{_pairing(fit_cfg)} {fit_cfg['family']} curve ({fit_cfg['optimizer']})"
        bn_data = bn_loader if has_batchnorm(curve.base) else None
        report = evaluate_curve(
            curve,
            loader,
            bn_data=bn_data,
            num_points=cfg["num_points"],
            label=label,
            metrics=metrics,
            progress=not quiet,
        )
    else:
        a, b = (_model(fit_cfg[k], data, k.upper()).to(device) for k in ("a", "b"))
        report = evaluate_line(
            a,
            b,
            cfg["num_points"],
            loader,
            bn_loader if has_batchnorm(a) else None,
            label=cfg["label"] or f"{_pairing(fit_cfg)} line",
            metrics=metrics,
            progress=not quiet,
        )
    run = RunFolder(out)
    run.write_config({"command": "evaluate", "evaluate": cfg})
    if cfg.get("run") and cfg["plane"]:
        _save_plane(run, curve, loader, bn_data, label, cfg, fit_cfg, data, quiet)
    return _save_evaluation(run, report, fit_cfg, data, fit_run, len(bn_loader.dataset), quiet)


def _evaluate_model(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool, restart: bool
) -> dict[str, Any]:
    """``evaluate`` of a run folder that holds one model (a merge): its loss and accuracy on the
    test set (or ``test_samples`` of it), with the statistics it was saved with."""
    cfg, _ = _prepare("evaluate", config, out, restart)
    if cfg.get("line"):
        raise InvalidArgumentError("evaluate takes a run folder (RUN) or --line A B, not both")
    if cfg["plane"]:
        raise InvalidArgumentError(
            f"--plane needs a curve (a `modeconn fit` run folder): {cfg['run']!r} holds one model"
        )
    _fork_rng()
    from modeconn import distributed
    from modeconn.metrics import Classification, measure
    from modeconn.resolve import model_spec

    device = distributed.current().device(cfg["device"])
    data = _open(cfg)
    model = _model(cfg["run"], data, "RUN").to(device)
    loader, _ = _evaluation_loaders(cfg, data)
    values = measure(model, loader, [Classification()])
    arch = model_spec(cfg["run"], data).arch
    label = cfg["label"] or "merged model"
    run = RunFolder(out)
    run.write_config({"command": "evaluate", "evaluate": cfg})
    results: dict[str, Any] = {
        "label": label,
        "run": cfg["run"],
        "run_state": run_state(cfg["run"])["state"],
        "model": arch,
        "data": _data_name(data),
        "test_samples": len(loader.dataset),
        "test_loss": values["loss"],
        "test_accuracy": values["accuracy"],
    }
    results["summary"] = (
        f"{label} ({arch} on {_data_name(data)}): test accuracy {values['accuracy']:.2f}%, "
        f"loss {values['loss']:.4f} -> {run.path}"
    )
    run.write_json("results.json", results)
    run.set_state("complete")
    _say(run, quiet, results["summary"])
    return results
