"""``modeconn export``: one model taken out of a run folder (its model, or a point of its curve),
written as a ``.safetensors`` file or a Hugging Face folder."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import describe_state, read_config, refuse_overwriting, run_state
from modeconn.workflow.fit_step import _saved_curve
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng
from modeconn.workflow.settings import resolved
from modeconn.workflow.steps import (
    _MODEL_RUNS,
    _bn_samples,
    _check_finite,
    _data_name,
    _open,
    _with_data,
)

EXPORT_FORMAT = "modeconn-export/1"
_COMMANDS = ("train", "align", "fit", "evaluate", "merge", "plot")


def _point(text: Any) -> float | str:
    """``--t``: ``"best"``, or a number from 0 to 1."""
    if isinstance(text, str) and text.strip().lower() == "best":
        return "best"
    try:
        t = float(text)
    except (TypeError, ValueError):
        t = math.nan
    if isinstance(text, bool) or not 0.0 <= t <= 1.0:
        raise InvalidArgumentError(
            f"--t takes best or a number from 0 (model A) to 1 (model B), got {text!r}"
        )
    return t


def _run_folder_above(path: Path) -> Path | None:
    """The run folder (one whose ``config.toml`` names a modeconn command) that is or holds ``path``."""
    for folder in (path, *path.parents):
        if (folder / "config.toml").is_file():
            try:
                command = read_config(folder).get("command")
            except InvalidArgumentError:
                continue
            if command in _COMMANDS:
                return folder
    return None


def _sidecar(out: Path) -> Path:
    return out.with_suffix(".json")


def _check_export_target(out: Path, inputs: Mapping[str, Any], force: bool) -> None:
    """``out`` damages no input, lies in no run folder, and is new (or, with ``force``, an
    earlier export: a ``.safetensors`` file, or a folder holding ``modeconn.json``)."""
    holder = _run_folder_above(out.resolve())
    if holder is not None:
        where = (
            "is a run folder"
            if holder == out.resolve()
            else f"lies inside the run folder {os.fspath(holder)!r}"
        )
        raise InvalidArgumentError(
            f"--out {os.fspath(out)!r} {where}, which holds what its command wrote: export to a path "
            "outside run folders"
        )
    refuse_overwriting(out, inputs)  # a folder that holds an input
    if out.suffix == ".safetensors":
        if out.is_dir():
            raise InvalidArgumentError(f"--out {os.fspath(out)!r} is a folder: name a .safetensors file")
        taken = [p for p in (out, _sidecar(out)) if p.exists()]
        if taken and not force:
            raise InvalidArgumentError(
                f"--out {os.fspath(taken[0])!r} exists: pass --force to replace it, or name a new file"
            )
        if force and _sidecar(out).is_dir():
            raise InvalidArgumentError(f"{os.fspath(_sidecar(out))!r} is a folder: name another --out")
    elif out.exists():
        if not force:
            raise InvalidArgumentError(
                f"--out {os.fspath(out)!r} exists: pass --force to replace it, or name a new folder"
            )
        if not out.is_dir() or not (out / "modeconn.json").is_file():
            raise InvalidArgumentError(
                f"--out {os.fspath(out)!r} is not an earlier export (it holds no modeconn.json), so --force "
                "does not replace it: name a new folder"
            )


def _refuse_unfinished(folder: str, what: str) -> None:
    state = run_state(folder)
    if state["state"] == "running":
        raise InvalidArgumentError(
            f"{what} {folder!r} is still being written ({describe_state(state)}): export it when it has "
            "finished (or once it is stopped)"
        )


def _evaluations_of(fit: Path) -> list[Path]:
    """The ``evaluate`` run folders beside the fit run folder ``fit`` that evaluate its curve."""
    found = []
    for folder in sorted(fit.parent.iterdir()):
        if not (folder / "config.toml").is_file() or not (folder / "evaluation.json").is_file():
            continue
        try:
            config = read_config(folder)
        except InvalidArgumentError:
            continue
        table = config.get("evaluate")
        if config.get("command") != "evaluate" or not isinstance(table, Mapping):
            continue
        if isinstance(table.get("run"), str) and Path(table["run"]).resolve() == fit.resolve():
            found.append(folder)
    return found


def _export_source(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What ``export`` takes out of ``cfg["run"]``, checked before anything is loaded:
    ``kind`` (``"model"`` or ``"curve"``), the run, for a curve its fit run and the evaluation
    ``--t best`` reads (``evaluation``)."""
    run = cfg["run"]
    config = read_config(run)  # one error for a file or a folder that is no run
    command = config.get("command")
    _refuse_unfinished(run, "the run")
    if isinstance(config.get("model"), Mapping) and "arch" in config["model"]:
        if cfg["t"] is not None:
            raise InvalidArgumentError(
                f"--t picks a point of a curve, and {run!r} is a `{command}` run: its one model is exported "
                "without --t"
            )
        return {"kind": "model", "command": command}
    evaluation = None
    if command == "evaluate":
        fit = config.get("evaluate", {}).get("run")
        if not fit:
            raise InvalidArgumentError(
                f"{run!r} evaluates a straight line, not a fitted curve: export its end points' run folders, "
                "or fit a curve and export a point of it"
            )
        evaluation, fit = run, fit
        _refuse_unfinished(fit, "the fit run")
        if read_config(fit).get("command") != "fit":
            raise InvalidArgumentError(
                f"{run!r} evaluates {fit!r}, which holds no curve: export that run itself"
            )
    elif command == "fit":
        fit = run
    else:
        raise InvalidArgumentError(
            f"{run!r} is a `{command}` run, which holds no model: export takes {_MODEL_RUNS}, a `modeconn fit` "
            "run (with --t) or the `modeconn evaluate` run of a curve (with --t)"
        )
    if cfg["t"] is None:
        raise InvalidArgumentError(
            f"{run!r} holds a curve: pass --t, the point to export (a number from 0, model A, to 1, model B), "
            "or --t best (the best test accuracy of its evaluation)"
        )
    if cfg["t"] == "best" and evaluation is None:
        found = _evaluations_of(Path(fit))
        if not found:
            raise InvalidArgumentError(
                f"--t best takes the best point of the curve's evaluation, and {run!r} was never evaluated "
                f"(no `modeconn evaluate` folder beside it evaluates it): run `modeconn evaluate {run} --out EVAL` "
                "first, then export EVAL (or RUN) --t best"
            )
        if len(found) > 1:
            names = ", ".join(repr(os.fspath(f)) for f in found)
            raise InvalidArgumentError(
                f"--t best: {run!r} was evaluated in {len(found)} folders ({names}): export the one to take "
                f"the best t from, e.g. modeconn export {os.fspath(found[0])} --t best"
            )
        evaluation = os.fspath(found[0])
    if evaluation is not None:
        _refuse_unfinished(evaluation, "the evaluation")
    return {"kind": "curve", "command": command, "fit": os.path.abspath(fit), "evaluation": evaluation}


def _is_hugging_face(model: Any) -> bool:
    import sys

    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _replace_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new folder beside ``out``, then put it in ``out``'s place: a
    crash leaves the old folder or the new one (or, between two renames, the old one aside)."""
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        write(tmp)
        tmp.chmod(0o777 & ~_umask())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@_keeps_caller_rng
def export(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, force: bool = False
) -> dict[str, Any]:
    """Write one model out of the run folder ``run``: the model of a ``train``, ``align`` or
    ``merge`` run (no ``t``), or the point ``t`` of a curve (a ``fit`` run, or the
    ``evaluate`` run of one): ``t`` from 0 to 1, or ``"best"``, the best test accuracy of the
    curve's evaluation (:meth:`PathReport.best`; for a fit run, the one ``evaluate`` folder
    beside it that evaluates it). A point of a curve with BatchNorm has its statistics
    recomputed on ``bn_samples`` training samples, as ``evaluate`` does (with an evaluation,
    its own ``bn_samples`` and ``batch_size`` unless given), with the random draws of the
    training split's augmentation seeded (0). ``evaluate`` draws them at each t in turn, so
    the exported point measures what the evaluation measured up to those draws.

    ``out`` is a ``.safetensors`` file (the state dict) with ``<out>.json`` beside it (the
    architecture and where the model comes from: what rebuilds it), or for a Hugging Face
    model the folder ``save_pretrained`` writes (with ``modeconn.json``). Both are written
    atomically, never into a run folder, and replace an existing ``out`` only with ``force``."""
    if not config.get("run"):
        raise InvalidArgumentError("export needs a run folder: modeconn export RUN [--t T] --out PATH")
    given = dict(config)
    given["t"] = _point(given["t"]) if given.get("t") is not None else None
    cfg = resolved("export", {k: v for k, v in given.items() if k != "t"}) | {"t": given["t"]}
    out = Path(out)
    source = _export_source(cfg)
    if source["kind"] == "curve":
        cfg = _with_data(cfg)
    inputs = {"RUN": cfg["run"], "fit": source.get("fit"), "evaluation": source.get("evaluation")}
    _check_export_target(out, inputs, force)
    _fork_rng()
    from modeconn import distributed
    from modeconn.resolve import build_model, model_spec

    record: dict[str, Any] = {"format": EXPORT_FORMAT, "run": cfg["run"], "command": source["command"]}
    record["run_state"] = run_state(cfg["run"])["state"]
    if source["kind"] == "model":
        if record["run_state"] not in ("complete", "unknown"):
            import warnings

            warnings.warn(
                f"{cfg['run']!r} is {describe_state(run_state(cfg['run']))}: exporting the model it last saved",
                stacklevel=2,
            )
        spec = model_spec(cfg["run"])
        model = build_model(spec)
        _check_finite(model, f"the model of {cfg['run']!r}")
        what = f"the model of the {source['command']} run {cfg['run']}"
    else:
        model, spec, what = _curve_point(cfg, source, given, record)
    if distributed.current().is_main:
        _write_export(model, spec, out, record, quiet)
    results = {**record, "out": os.fspath(out)}
    evaluated = record.get("evaluated")
    if evaluated:
        what += f" (evaluated: test accuracy {evaluated['accuracy']:.2f}%, loss {evaluated['loss']:.4f})"
    results["summary"] = f"exported {what} -> {os.fspath(out)}"
    if not quiet and distributed.current().is_main:
        print(results["summary"])
    return results


def _curve_point(
    cfg: dict[str, Any], source: Mapping[str, Any], given: Mapping[str, Any], record: dict[str, Any]
) -> tuple[Any, Any, str]:
    """The model at ``cfg["t"]`` of the curve of ``source``, BatchNorm recomputed; what it is
    goes into ``record``."""
    import warnings

    import torch

    from modeconn import distributed
    from modeconn.batchnorm import has_batchnorm
    from modeconn.path_report import PathReport
    from modeconn.resolve import model_spec

    t = cfg["t"]
    if source["evaluation"] is not None:
        folder = Path(source["evaluation"])
        evaluated = read_config(folder).get("evaluate", {})
        for key in ("bn_samples", "batch_size"):  # the evaluated model, unless told otherwise
            if key not in given and key in evaluated:
                cfg[key] = evaluated[key]
        report = PathReport.from_dict(json.loads((folder / "evaluation.json").read_text()))
        if t == "best":
            t, _ = report.best("accuracy")
            record["t_requested"] = "best"
        if t in report.t:
            i = report.t.index(t)
            record["evaluated"] = {"evaluation": os.fspath(folder), "accuracy": report.accuracy[i]}
            record["evaluated"]["loss"] = report.loss[i]
    fit_cfg = resolved("fit", read_config(source["fit"])["fit"]) | {k: cfg[k] for k in ("data", "data_root")}
    device = distributed.current().device(cfg["device"])
    data = _open(cfg)
    curve, fit_run = _saved_curve(source["fit"], fit_cfg, data)
    if source["evaluation"] is not None:
        epoch = report.meta.get("curve_epoch")
        if epoch is not None and fit_run["curve_epoch"] is not None and epoch != fit_run["curve_epoch"]:
            warnings.warn(
                f"{source['evaluation']!r} evaluated the curve as of epoch {epoch}, and {source['fit']!r} "
                f"now holds epoch {fit_run['curve_epoch']}: its best t may have moved; evaluate it again",
                stacklevel=3,
            )
    curve.to(device)
    bn_data = None
    if has_batchnorm(curve.base):
        bn = _bn_samples(data, cfg["bn_samples"])  # evaluate's: the model it measured at t
        bn_data = torch.utils.data.DataLoader(bn, batch_size=cfg["batch_size"])
    model = curve.model_at(float(t), bn_data=bn_data)
    _check_finite(model, f"the model at t = {t} of {source['fit']!r}")
    record.update(
        t=float(t),
        fit_run=source["fit"],
        curve_epoch=fit_run["curve_epoch"],
        data=_data_name(data),
        bn_recomputed=bn_data is not None,
    )
    if bn_data is not None:
        record["bn_samples"] = len(bn_data.dataset)
    spec = model_spec(fit_cfg["a"], data)
    return model, spec, f"the point t = {float(t):g} of the curve of {source['fit']}"


def _write_export(model: Any, spec: Any, out: Path, record: dict[str, Any], quiet: bool) -> None:
    """``model`` to ``out`` (see :func:`export`), with ``record`` and how to rebuild it."""
    from modeconn.training.checkpoint import atomic_write, save_checkpoint

    build = {k: v for k, v in spec.to_config().items() if k != "weights"}
    if _is_hugging_face(model):
        if out.suffix == ".safetensors":
            raise InvalidArgumentError(
                f"the model is a Hugging Face {type(model).__name__}: --out names the folder save_pretrained "
                f"writes, not a .safetensors file (e.g. --out {os.fspath(out.with_suffix(''))})"
            )
        note = {**record, "model": {**build, "hugging_face": type(model).__name__}}

        def write(tmp: Path) -> None:
            from transformers.utils import logging

            shown = logging.is_progress_bar_enabled()
            if quiet:
                logging.disable_progress_bar()
            try:
                model.save_pretrained(tmp)
            finally:
                if shown:
                    logging.enable_progress_bar()
            (tmp / "modeconn.json").write_text(json.dumps(note, indent=1) + "\n")

        _replace_folder(out, write)
        return
    if out.suffix != ".safetensors":
        raise InvalidArgumentError(
            f"--out {os.fspath(out)!r}: a {type(model).__name__} is exported as a .safetensors file "
            "(a folder is for a Hugging Face model's save_pretrained): name a .safetensors file"
        )
    note = {**record, "model": {**build, "weights": out.name}}
    save_checkpoint(model, out)
    text = json.dumps(note, indent=1) + "\n"
    atomic_write(_sidecar(out), lambda tmp: Path(tmp).write_text(text))
