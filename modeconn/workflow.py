"""The researcher's workflow, one function per step, each writing a run folder: ``train`` end
points, ``align`` B to A, ``fit`` a curve, ``evaluate`` a curve or a line, ``plot`` saved
results. The ``modeconn`` command line calls them; so can scripts.

Each step takes its settings as one dict (the command's table of ``config.toml``; missing keys
take the step's defaults in :data:`DEFAULTS`) and returns what it prints as a results dict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, read_config
from modeconn.training.settings import CURVES, END_POINTS, Settings  # light: no torch

__all__ = ["DEFAULTS", "train", "align", "fit", "evaluate", "plot"]

# the training settings and their defaults are Settings' own (lr: each step's default)
_FIT_SETTINGS = {k: v for k, v in asdict(END_POINTS).items() if k != "lr"}

DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "data": "digits",
        "data_root": None,
        "epochs": 10,
        "lr": END_POINTS.lr,
        **_FIT_SETTINGS,
        "seed": 0,
        "device": None,
    },
    "align": {
        "data": "digits",
        "data_root": None,
        "cost": "correlation",
        "num_samples": 2048,
        "batch_size": 256,
        "seed": 0,
        "device": None,
    },
    "fit": {
        "data": "digits",
        "data_root": None,
        "optimizer": "sgd",
        "family": "bezier",
        "num_bends": 1,
        "epochs": 5,
        "lr": CURVES.lr,
        **_FIT_SETTINGS,
        "seed": 0,
        "device": None,
        "options": {},
    },
    "evaluate": {
        "num_points": 11,
        "bn_samples": 2048,
        "test_samples": None,
        "batch_size": 256,
        "plane": 0,
        "label": "",
        "device": None,
    },
}
"""Every step's settings and their defaults (``a``, ``b``, ``model`` and ``run`` have none)."""


def resolved(step: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over the step's defaults; an unknown key is an error that names the known ones."""
    known = set(DEFAULTS[step]) | {"model", "a", "b", "run", "line"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidArgumentError(
            f"unknown setting(s) for {step}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    out = {**DEFAULTS[step], **given}
    # models and runs named by a path are kept absolute: the config reruns from any folder
    for key in ("model", "a", "b", "run"):
        if isinstance(out.get(key), str) and os.path.exists(out[key]):
            out[key] = os.path.abspath(out[key])
    if out.get("line"):
        out["line"] = [os.path.abspath(v) if os.path.exists(v) else v for v in out["line"]]
    return out


def _settings(cfg: Mapping[str, Any]) -> Settings:
    return Settings(lr=cfg["lr"], **{k: cfg[k] for k in _FIT_SETTINGS})


def _seed(cfg: Mapping[str, Any]) -> None:
    import torch

    torch.manual_seed(int(cfg["seed"]))


def _say(run: RunFolder, quiet: bool, line: str) -> None:
    run.log(line)
    if not quiet and run.main:
        from tqdm.auto import tqdm

        tqdm.write(line)


def _history_rows(history: Any) -> list[dict[str, Any]]:
    return [
        {"epoch": r.epoch, "loss": r.loss, "accuracy": r.accuracy, "lr": r.lr, "seconds": r.seconds}
        for r in history
    ]


def train(config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False) -> dict[str, Any]:
    """Train one end point: ``out/model.safetensors``, resumable from ``out/checkpoint.pt``."""
    from modeconn.metrics import evaluate as measure_model
    from modeconn.resolve import build_model, model_spec, open_data
    from modeconn.training import save_checkpoint, train_model

    cfg = resolved("train", config)
    if not cfg.get("model"):
        raise InvalidArgumentError(
            "train needs a model: --model NAME (a registry name or package.module:callable)"
        )
    data = open_data(cfg["data"], cfg["data_root"])
    spec = model_spec(cfg["model"], data)
    run = RunFolder(out)
    _seed(cfg)
    model = build_model(spec)
    run.write_config(
        {"command": "train", "train": cfg, "model": {**spec.to_config(), "weights": "model.safetensors"}}
    )
    history = train_model(
        model,
        data.train,
        epochs=cfg["epochs"],
        settings=_settings(cfg),
        device=cfg["device"],
        checkpoint=run / "checkpoint.pt",
        progress=not quiet,
    )
    if run.main:
        save_checkpoint(model, run / "model.safetensors")
    loss, accuracy = measure_model(model, data.test)
    results = {"test_loss": loss, "test_accuracy": accuracy, "history": _history_rows(history)}
    run.write_json("results.json", results)
    run.write_csv("results.csv", results["history"])
    _say(
        run,
        quiet,
        f"{spec.arch} on {data.name}: test accuracy {accuracy:.2f}%, loss {loss:.4f} -> {run.path}",
    )
    return results


def align(config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False) -> dict[str, Any]:
    """Align B to A: ``out/aligned.safetensors`` (a model later steps can name by this folder),
    ``out/perms.json`` and the correlation signature."""
    from modeconn import distributed
    from modeconn.alignment import align as align_models
    from modeconn.data import alignment_subset
    from modeconn.resolve import build_model, model_spec, open_data
    from modeconn.training import save_checkpoint

    cfg = resolved("align", config)
    data = open_data(cfg["data"], cfg["data_root"])
    spec_a, spec_b = model_spec(cfg["a"], data), model_spec(cfg["b"], data)
    run = RunFolder(out)
    a, b = build_model(spec_a), build_model(spec_b)
    _seed(cfg)
    n = min(int(cfg["num_samples"]), len(data.train))
    subset = alignment_subset(data.train, num_samples=n, seed=int(cfg["seed"]))
    device = distributed.current().device(cfg["device"])  # CUDA when present; this rank's GPU
    result = align_models(
        a.to(device),
        b.to(device),
        subset,
        cost=cfg["cost"],
        batch_size=cfg["batch_size"],
        labels=True,
        progress=not quiet,
    )
    run.write_config(
        {"command": "align", "align": cfg, "model": {**spec_b.to_config(), "weights": "aligned.safetensors"}}
    )
    if run.main:
        save_checkpoint(result.model, run / "aligned.safetensors")
    run.write_json("perms.json", {g: p.tolist() for g, p in result.perms.items()})
    results: dict[str, Any] = {"groups": len(result.perms), "notes": result.notes}
    if result.signature is not None:
        before, after = result.signature.mean()
        results.update(
            correlation_before=before, correlation_after=after, signature=result.signature.to_dict()
        )
        if run.main:
            result.signature.plot(run / "correlation_signature.png")
    run.write_json("results.json", results)
    line = f"aligned {cfg['b']} to {cfg['a']} by {cfg['cost']} on {n} samples: {len(result.perms)} groups"
    if result.signature is not None:
        line += f", mean matched correlation {results['correlation_before']:.3f} -> {results['correlation_after']:.3f}"
    _say(run, quiet, line + f" -> {run.path}")
    return results


def _curve(cfg: Mapping[str, Any], data: Any) -> Any:
    from modeconn.curves import Curve
    from modeconn.resolve import build_model, model_spec

    a, b = build_model(model_spec(cfg["a"], data)), build_model(model_spec(cfg["b"], data))
    return Curve(a, b, family=cfg["family"], num_bends=cfg["num_bends"])


def fit(config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False) -> dict[str, Any]:
    """Fit a curve between A and B with an optimizer plugin: ``out/curve.pt`` (resumable)."""
    from modeconn.resolve import open_data
    from modeconn.training import fit_curve

    cfg = resolved("fit", config)
    data = open_data(cfg["data"], cfg["data_root"])
    _seed(cfg)
    curve = _curve(cfg, data)
    settings = _settings(cfg)
    run = RunFolder(out)
    run.write_config({"command": "fit", "fit": cfg})
    history = fit_curve(
        curve,
        data.train,
        optimizer=cfg["optimizer"],
        epochs=cfg["epochs"],
        settings=settings,
        device=cfg["device"],
        checkpoint=run / "curve.pt",
        progress=not quiet,
        **dict(cfg["options"]),
    )
    results: dict[str, Any] = {"history": _history_rows(history)}
    if "perms" in history.summary:  # pam
        results["perms"] = {g: p.tolist() for g, p in history.summary["perms"].items()}
    run.write_json("results.json", results)
    run.write_csv("results.csv", results["history"])
    last = history[-1] if history else None
    _say(
        run,
        quiet,
        f"fitted a {cfg['family']} curve ({cfg['optimizer']}, {cfg['epochs']} epoch{'s' * (cfg['epochs'] != 1)})"
        + (f": training loss {last.loss:.4f}, accuracy {last.accuracy:.2f}%" if last else "")
        + f" -> {run.path}",
    )
    return results


def evaluate(config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False) -> dict[str, Any]:
    """Evaluate the curve of a ``fit`` run folder (``run``), or the straight line between the
    models ``a`` and ``b`` (``line``), with BatchNorm recomputed at each t: ``evaluation.json``
    and ``.csv`` and ``path.png``; with ``plane`` (a grid size), ``plane.json`` and ``plane.png``."""
    import torch

    from modeconn import distributed
    from modeconn.batchnorm import has_batchnorm
    from modeconn.data import alignment_subset
    from modeconn.metrics import Classification
    from modeconn.paths import PathReport, interpolate
    from modeconn.resolve import build_model, model_spec, open_data
    from modeconn.training import load_checkpoint

    cfg = resolved("evaluate", config)
    if cfg.get("run"):
        source = read_config(cfg["run"])
        if source.get("command") != "fit":
            raise InvalidArgumentError(
                f"{cfg['run']!r} is not a `modeconn fit` run folder; to evaluate a line pass --line A B"
            )
        fit_cfg = resolved("fit", source["fit"])
    elif cfg.get("line"):
        fit_cfg = resolved(
            "fit",
            {
                **{k: v for k, v in cfg.items() if k in ("data", "data_root")},
                "a": cfg["line"][0],
                "b": cfg["line"][1],
            },
        )
    else:
        raise InvalidArgumentError("evaluate needs a fit run folder (RUN) or --line A B")
    data = open_data(fit_cfg["data"], fit_cfg["data_root"])
    device = distributed.current().device(cfg["device"])
    run = RunFolder(out)
    torch.manual_seed(0)
    bn = alignment_subset(data.train, num_samples=min(int(cfg["bn_samples"]), len(data.train)), seed=0)
    test = data.test
    if cfg["test_samples"]:
        test = alignment_subset(test, num_samples=min(int(cfg["test_samples"]), len(test)), seed=0)
    loader = torch.utils.data.DataLoader(test, batch_size=cfg["batch_size"])
    bn_loader = torch.utils.data.DataLoader(bn, batch_size=cfg["batch_size"])
    metrics: list[Any] = [Classification()]
    if cfg.get("run"):
        from modeconn.curves import evaluate_curve

        curve = _curve(fit_cfg, data)
        load_checkpoint(curve, Path(cfg["run"]) / "curve.pt")
        curve.to(device)
        label = cfg["label"] or f"{fit_cfg['family']} curve ({fit_cfg['optimizer']})"
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
        if cfg["plane"]:
            from modeconn.plane import plane
            from modeconn.plotting import plot_planes

            grid = plane(curve, loader, bn_data, grid=int(cfg["plane"]), label=label, progress=not quiet)
            grid.meta.update(data=data.name, model=model_spec(fit_cfg["a"], data).arch)
            if run.main:
                grid.save(run / "plane.json")
                plot_planes([grid], run / "plane.png", title=f"{grid.meta['model']} on {data.name}")
    else:
        a, b = (build_model(model_spec(fit_cfg[k], data)).to(device) for k in ("a", "b"))
        if cfg["plane"]:
            raise InvalidArgumentError(
                "--plane needs a curve (a `modeconn fit` run folder): a line spans no plane"
            )
        report = interpolate(
            a,
            b,
            cfg["num_points"],
            loader,
            bn_loader if has_batchnorm(a) else None,
            label=cfg["label"] or "line",
            metrics=metrics,
            progress=not quiet,
        )
    arch = model_spec(fit_cfg["a"], data).arch
    report.meta.update(data=data.name, model=arch, a=fit_cfg["a"], b=fit_cfg["b"])
    run.write_config({"command": "evaluate", "evaluate": cfg})
    if run.main:
        report.save(run / "evaluation.json")
        report.save(run / "evaluation.csv")
        PathReport.plot([report], run / "path.png")
    results = report.to_dict()
    _say(
        run,
        quiet,
        f"{report.label}: accuracy {report.accuracy[0]:.2f}% -> min {report.min_accuracy:.2f}% -> "
        f"{report.accuracy[-1]:.2f}%, loss barrier {report.barrier:.4f} -> {run.path}",
    )
    return results


def plot(
    runs: list[str], out: str | os.PathLike, *, quiet: bool = False, title: str | None = None
) -> dict[str, Any]:
    """Figures of what the ``evaluate`` run folders ``runs`` saved, without recomputing: the
    paths on one figure, ``out`` (a ``.png`` or ``.pdf`` file; both when it has no suffix), and,
    when runs hold a plane (``evaluate --plane``), the planes side by side in ``<out>-plane``."""
    from modeconn.paths import PathReport
    from modeconn.plane import PlaneReport
    from modeconn.plotting import plot_planes

    reports, planes = [], []
    for folder in runs:
        path = Path(folder) / "evaluation.json" if Path(folder).is_dir() else Path(folder)
        if not path.is_file():
            raise InvalidArgumentError(
                f"{folder!r} holds no evaluation.json: run `modeconn evaluate` into it first"
            )
        reports.append(PathReport.from_dict(json.loads(path.read_text())))
        if (path.parent / "plane.json").is_file():
            planes.append(PlaneReport.from_dict(json.loads((path.parent / "plane.json").read_text())))
    out = Path(out)
    known = out.suffix in (".png", ".pdf")
    stem, suffixes = (out.with_suffix(""), [out.suffix]) if known else (out, [".png", ".pdf"])
    stem.parent.mkdir(parents=True, exist_ok=True)
    figures = []
    for suffix in suffixes:
        figures.append(stem.with_name(stem.name + suffix))
        PathReport.plot(reports, figures[-1], title=title)
        if planes:
            figures.append(stem.with_name(stem.name + "-plane" + suffix))
            names = (planes[0].meta.get("model"), planes[0].meta.get("data"))
            plot_planes(planes, figures[-1], title=title or " on ".join(x for x in names if x))
    if not quiet:
        print(f"{len(reports)} path(s), {len(planes)} plane(s) -> {', '.join(os.fspath(f) for f in figures)}")
    return {"figures": [os.fspath(f) for f in figures], "paths": len(reports), "planes": len(planes)}
