"""The researcher's workflow, one function per step, each writing a run folder: ``train`` end
points, ``align`` B to A, ``fit`` a curve, ``evaluate`` a curve or a line, ``merge`` N trained
models into one, ``plot`` saved results; and ``export``, which writes one model out of a run
folder. The ``modeconn`` command line calls them; so can scripts.

Each step takes its settings as one dict (the command's table of ``config.toml``; missing keys
take the step's defaults in :data:`DEFAULTS`) and returns what it prints as a results dict.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, describe_state, read_config, refuse_overwriting, run_folder_of, run_state
from modeconn.training.settings import CURVES, END_POINTS, SETTING_NAMES, Settings  # light: no torch

__all__ = ["DEFAULTS", "setting_type", "train", "align", "fit", "evaluate", "merge", "export", "plot"]

# the training settings and their defaults are Settings' own (lr: each step's default)
_FIT_SETTINGS = {k: v for k, v in asdict(END_POINTS).items() if k != "lr"}

DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "data": "digits",
        "data_root": None,
        "verify": True,
        "train_samples": None,
        "test_samples": None,
        "epochs": 10,
        "lr": END_POINTS.lr,
        **_FIT_SETTINGS,
        "seed": 0,
        "device": None,
    },
    "align": {
        "data": None,
        "data_root": None,
        "verify": True,
        "cost": "correlation",
        "num_samples": 2048,
        "batch_size": 256,
        "seed": 0,
        "device": None,
    },
    "fit": {
        "data": None,
        "data_root": None,
        "verify": True,
        "train_samples": None,
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
        "data": None,
        "data_root": None,
        "verify": True,
        "num_points": 11,
        "bn_samples": 2048,
        "test_samples": None,
        "batch_size": 256,
        "plane": 0,
        "label": "",
        "device": None,
    },
    "merge": {
        "data": None,
        "data_root": None,
        "verify": True,
        "method": "mean",
        "cost": "correlation",
        "weights": None,
        "reference": 0,
        "repair": "auto",
        "num_samples": 2048,
        "bn_samples": 2048,
        "test_samples": None,
        "batch_size": 256,
        "max_iterations": 10,
        "seed": 0,
        "device": None,
    },
    "export": {
        "data": None,
        "data_root": None,
        "verify": True,
        "t": None,
        "bn_samples": 2048,
        "batch_size": 256,
        "device": None,
    },
}
"""Every step's settings and their defaults (``a``, ``b``, ``model``, ``run`` and ``runs`` have
none). A ``data`` of ``None`` is taken from the input runs (``digits`` when they record none)."""

_TYPES: dict[str, type] = {"data": str, "data_root": str, "device": str, "model": str}
_TYPES |= {"test_samples": int, "train_samples": int}
_TYPES |= {"a": str, "b": str, "run": str, "line": list, "runs": list, "weights": list}
_AT_LEAST = {"epochs": 0, "num_points": 2, "num_samples": 1, "bn_samples": 1, "test_samples": 1}
_AT_LEAST |= {"train_samples": 1}
_AT_LEAST |= {"batch_size": 1, "num_bends": 0, "reference": 0, "max_iterations": 1}
# settings that take one of a few words (merge's methods are modeconn.merging.METHODS: a test
# keeps the two lists one, and this one is read without importing torch)
_CHOICES = {"method": ("mean", "star"), "repair": ("auto", "yes", "no")}
_KIND_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
_KIND_NAMES |= {dict: "a table", list: "a list"}
# what may change when a run resumes into its folder (it says so); anything else changes the result
MUTABLE = {"epochs", "device", "label", *SETTING_NAMES}


def setting_type(step: str, key: str) -> type | None:
    """The type a setting of ``step`` takes: its default's, or the declared one where the
    default is ``None``."""
    default = DEFAULTS[step].get(key)
    return _TYPES.get(key, type(default) if default is not None else None)


def _check_value(step: str, key: str, value: Any) -> None:
    """``value`` has the type of ``key``'s default and lies in its range: one line if not."""
    kind = setting_type(step, key)
    if value is None or kind is None:
        return
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise InvalidArgumentError(f"{step} setting {key} = {value!r} must be {_KIND_NAMES[kind]}")
    low = _AT_LEAST.get(key)
    if low is not None and value < low:
        raise InvalidArgumentError(f"{step} setting {key} = {value!r} must be at least {low}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise InvalidArgumentError(
            f"{step} setting {key} = {value!r} must be one of {', '.join(_CHOICES[key])}"
        )
    if key == "plane" and value != 0 and value < 2:
        raise InvalidArgumentError(
            f"{step} setting plane = {value!r} must be 0 (no plane) or a grid of at least 2"
        )


def resolved(step: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over the step's defaults, each value checked (type and range); an unknown key
    is an error that names the known ones."""
    known = (
        set(DEFAULTS[step]) | {"model", "a", "b", "run", "line"} | ({"runs"} if step == "merge" else set())
    )
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidArgumentError(
            f"unknown setting(s) for {step}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for key, value in given.items():
        _check_value(step, key, value)
    out = {**DEFAULTS[step], **given}
    # models and runs named by a path are kept absolute: the config reruns from any folder
    for key in ("model", "a", "b", "run"):
        if isinstance(out.get(key), str) and os.path.exists(out[key]):
            out[key] = os.path.abspath(out[key])
    if out.get("line"):
        if len(out["line"]) != 2 or not all(isinstance(v, str) for v in out["line"]):
            raise InvalidArgumentError(f"{step} setting line must name two models, got {out['line']!r}")
        out["line"] = [os.path.abspath(v) if os.path.exists(v) else v for v in out["line"]]
    if out.get("runs"):
        if not all(isinstance(v, str) for v in out["runs"]):
            raise InvalidArgumentError(f"{step} setting runs must name run folders, got {out['runs']!r}")
        out["runs"] = [os.path.abspath(v) if os.path.exists(v) else v for v in out["runs"]]
    return out


def _inputs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The models and runs a step reads, by the name the user knows them by."""
    named = {k: cfg.get(k) for k in ("a", "b", "run")}
    if cfg.get("line"):
        named |= {"A": cfg["line"][0], "B": cfg["line"][1]}
    named |= {f"#{i + 1}": v for i, v in enumerate(cfg.get("runs") or [])}
    return {k: v for k, v in named.items() if v}


def _recorded_data(folder: Any) -> tuple[str, str | None, bool] | None:
    """The dataset (name, root, verify) a run folder was made with, following a fit's or an
    align's own inputs; ``None`` when it records none."""
    seen = set()
    while folder is not None and folder not in seen:
        seen.add(folder)
        config = read_config(folder)
        table = config.get(config.get("command", ""), {})
        if not isinstance(table, Mapping):
            return None
        if table.get("data"):
            return table["data"], table.get("data_root"), table.get("verify", True)
        nxt = table.get("a") or table.get("run")
        folder = run_folder_of(nxt) if isinstance(nxt, str) else None
    return None


def _with_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with its dataset: as given, else the one its input runs record (one error when
    they disagree), else the embedded digits."""
    if cfg.get("data"):
        return cfg
    found: dict[str, tuple[str, str | None, bool]] = {}
    for name, value in _inputs(cfg).items():
        folder = run_folder_of(value)
        data = _recorded_data(folder) if folder is not None else None
        if data is not None:
            found[name] = data
    if len({d[:2] for d in found.values()}) > 1:
        said = ", ".join(f"{k} on {d[0]}" + (f" ({d[1]})" if d[1] else "") for k, d in found.items())
        raise InvalidArgumentError(f"the input runs were made on different data ({said}): pass --data")
    name, root, verify = next(iter(found.values()), ("digits", None, True))
    return {
        **cfg,
        "data": name,
        "data_root": cfg.get("data_root") or root,
        "verify": cfg["verify"] and verify,
    }


def _open(cfg: Mapping[str, Any]) -> Any:
    from modeconn.resolve import open_data

    data = open_data(cfg["data"], cfg["data_root"], verify=cfg["verify"])
    if cfg.get("train_samples"):
        data.train = _subset(data.train, cfg["train_samples"], "train_samples", cfg.get("seed", 0))
    return data


def _subset(dataset: Any, n: int, key: str, seed: int) -> Any:
    from modeconn.data import alignment_subset

    if n > len(dataset):
        raise InvalidArgumentError(f"{key} = {n}: the data has {len(dataset)} samples")
    return alignment_subset(dataset, num_samples=n, seed=int(seed))


def _model(text: str, data: Any, role: str) -> Any:
    """The model ``text`` names, checked against ``data`` (classes, channels) and for an
    unfinished run, with its weights loaded."""
    from modeconn.resolve import build_model, model_spec

    spec = model_spec(text, data)
    for what, made, has in (
        ("classes", spec.num_classes, data.num_classes),
        ("input channels", spec.in_chans, data.in_chans),
    ):
        if made is not None and made != has:
            raise InvalidArgumentError(
                f"model {role} ({text!r}) is made for {made} {what} but {data.name} has {has}: "
                "pass the --data it was trained on"
            )
    folder = run_folder_of(text)
    if folder is not None:
        state = run_state(folder)
        if state["state"] not in ("complete", "unknown"):
            import warnings

            warnings.warn(
                f"model {role} ({text!r}) is from a run that is {describe_state(state)}", stacklevel=2
            )
    model = build_model(spec)
    _check_finite(model, f"model {role} ({text!r})")
    return model


def _pairing(cfg: Mapping[str, Any]) -> str:
    """``"aligned"`` when model B is the output of ``modeconn align`` (of A), else ``"unaligned"``."""
    folder = run_folder_of(cfg["b"])
    return "aligned" if folder is not None and read_config(folder).get("command") == "align" else "unaligned"


def _data_name(data: Any) -> str:
    """A dataset's name for figures and reports: a built-in's name, or an ImageFolder's folder name."""
    from modeconn.resolve import BUILTIN_DATASETS

    return data.name if data.name in BUILTIN_DATASETS else Path(data.name).name


def _check_finite(model: Any, what: str) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise InvalidArgumentError(f"{what} has non-finite weights (NaN or inf in {name!r})")


def _prepare(
    step: str,
    config: Mapping[str, Any],
    out: Any,
    restart: bool,
    *,
    check: Callable[[dict[str, Any]], None] | None = None,
    mutable: Any = MUTABLE,
) -> tuple[dict[str, Any], list[str]]:
    """The checks every step makes before it imports torch or writes anything: its settings
    (and the step's own ``check`` of them), its dataset, that ``out`` damages no input, and
    that ``out`` may hold this run (a run whose settings differ in ``mutable`` keys only)."""
    cfg = resolved(step, config)
    if check is not None:
        check(cfg)
    if step != "train":
        cfg = _with_data(cfg)
    refuse_overwriting(out, _inputs(cfg))
    changes = RunFolder.check(out, step, cfg, mutable=mutable, restart=restart, defaults=DEFAULTS[step])
    return cfg, changes


def _progress(run: RunFolder, desc: str) -> Any:
    """A callback that logs each epoch and records it as the run's state."""

    def on_epoch_end(state: Any) -> None:
        run.log(f"{desc} {state.history[-1]} (of {state.epochs})")
        run.set_state("running", epoch=state.epoch, epochs=state.epochs)

    return on_epoch_end


def _training(run: RunFolder, epochs: int, changes: list[str], fn: Any) -> Any:
    """Run ``fn()`` (a training call) with the run's state kept: running, then complete, or
    interrupted / failed with the epoch reached, each in the log."""
    before = run_state(run.path)
    if before.get("epoch"):
        run.log(
            f"resuming after epoch {before['epoch']} ({describe_state(before)})"
            + (f" with changed settings: {'; '.join(changes)}" if changes else "")
        )
    run.set_state("running", epoch=before.get("epoch", 0), epochs=epochs)
    try:
        out = fn()
    except KeyboardInterrupt:
        now = run_state(run.path)
        run.set_state("interrupted", epoch=now.get("epoch", 0), epochs=epochs)
        run.log(f"interrupted after epoch {now.get('epoch', 0)}; run the same command again to resume")
        raise
    except Exception as e:
        now = run_state(run.path)
        run.set_state("failed", epoch=now.get("epoch", 0), epochs=epochs)
        run.log(
            f"failed after epoch {now.get('epoch', 0)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        )
        raise
    run.set_state("complete", epoch=epochs, epochs=epochs)
    return out


def _settings(cfg: Mapping[str, Any]) -> Settings:
    return Settings(lr=cfg["lr"], **{k: cfg[k] for k in _FIT_SETTINGS})


_RNG_SCOPE: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "modeconn_workflow_rng_scope", default=None
)


def _keeps_caller_rng(step: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``step`` with a scope that :func:`_fork_rng` forks torch's global generators into, given
    back as they were when the step ends (however it ends): a step seeds them from its ``seed``
    (same seed, same results) without reseeding the caller's."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with contextlib.ExitStack() as scope:
            token = _RNG_SCOPE.set(scope)
            try:
                return step(*args, **kwargs)
            finally:
                _RNG_SCOPE.reset(token)

    return run


def _fork_rng() -> None:
    """From here to the end of the step, torch's global generators (the CPU's and every CUDA
    device's) are a fork of the caller's. Called once the step's checks pass, not before: a
    mistake is reported before torch is imported."""
    import torch

    scope = _RNG_SCOPE.get()
    if scope is None:
        raise RuntimeError("_fork_rng() outside a step decorated with _keeps_caller_rng")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    scope.enter_context(torch.random.fork_rng(devices=devices))


def _seed(cfg: Mapping[str, Any]) -> None:
    """Seed the step's fork of torch's global generators (see :func:`_fork_rng`)."""
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


@_keeps_caller_rng
def train(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Train one end point: ``out/model.safetensors``, resumable from ``out/checkpoint.pt``.
    ``restart`` keeps a folder's earlier contents aside instead of resuming them."""
    if not config.get("model"):
        raise InvalidArgumentError(
            "train needs a model: --model NAME (a registry name or package.module:callable)"
        )
    cfg, changes = _prepare("train", config, out, restart)
    _fork_rng()
    from modeconn import distributed
    from modeconn.metrics import evaluate as measure_model
    from modeconn.resolve import build_model, model_spec
    from modeconn.training import save_checkpoint, train_model

    device = distributed.current().device(cfg["device"])
    data = _open(cfg)
    if cfg["test_samples"]:
        data.test = _subset(data.test, cfg["test_samples"], "test_samples", 0)
    spec = model_spec(cfg["model"], data)
    _seed(cfg)
    model = build_model(spec)
    run = RunFolder(out)
    run.write_config(
        {"command": "train", "train": cfg, "model": {**spec.to_config(), "weights": "model.safetensors"}}
    )
    history = _training(
        run,
        cfg["epochs"],
        changes,
        lambda: train_model(
            model,
            data.train,
            epochs=cfg["epochs"],
            settings=_settings(cfg),
            device=device,
            checkpoint=run / "checkpoint.pt",
            callbacks=[_progress(run, "train")],
            progress=not quiet,
        ),
    )
    if run.main:
        save_checkpoint(model, run / "model.safetensors")
    loss, accuracy = measure_model(model, data.test)
    results = {"test_loss": loss, "test_accuracy": accuracy, "history": _history_rows(history)}
    results["summary"] = (
        f"{spec.arch} on {_data_name(data)}: test accuracy {accuracy:.2f}%, loss {loss:.4f} -> {run.path}"
    )
    run.write_json("results.json", results)
    run.write_csv("results.csv", results["history"])
    _say(run, quiet, results["summary"])
    return results


@_keeps_caller_rng
def align(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Align B to A: ``out/aligned.safetensors`` (a model later steps can name by this folder),
    ``out/perms.json`` and the correlation signature."""
    cfg, _ = _prepare("align", config, out, restart)
    _fork_rng()
    from modeconn import distributed
    from modeconn.alignment import align as align_models
    from modeconn.data import alignment_subset
    from modeconn.resolve import model_spec
    from modeconn.training import save_checkpoint

    device = distributed.current().device(cfg["device"])  # CUDA when present; this rank's GPU
    data = _open(cfg)
    a, b = _model(cfg["a"], data, "A"), _model(cfg["b"], data, "B")
    spec_b = model_spec(cfg["b"], data)
    _seed(cfg)
    n = min(int(cfg["num_samples"]), len(data.train))
    subset = alignment_subset(data.train, num_samples=n, seed=int(cfg["seed"]))
    result = align_models(
        a.to(device),
        b.to(device),
        subset,
        cost=cfg["cost"],
        batch_size=cfg["batch_size"],
        labels=True,
        progress=not quiet,
    )
    run = RunFolder(out)
    run.write_config(
        {"command": "align", "align": cfg, "model": {**spec_b.to_config(), "weights": "aligned.safetensors"}}
    )
    if run.main:
        save_checkpoint(result.model, run / "aligned.safetensors")
    hidden = {g.name for g in result.spec if g.hidden}
    perms = {
        "hidden_units": {g: p.tolist() for g, p in result.perms.items() if g in hidden},
        "other_axes": {g: p.tolist() for g, p in result.perms.items() if g not in hidden},  # outputs, tokens
    }
    run.write_json("perms.json", perms)
    results: dict[str, Any] = {"groups": len(perms["hidden_units"]), "samples": n, "notes": result.notes}
    if result.signature is not None:
        before, after = result.signature.mean()
        results.update(
            correlation_before=before, correlation_after=after, signature=result.signature.to_dict()
        )
        if run.main:
            result.signature.plot(run / "correlation_signature.png")
    line = f"aligned {cfg['b']} to {cfg['a']} by {cfg['cost']} on {n} samples: {results['groups']} groups of hidden units"
    if result.signature is not None:
        line += f", mean matched correlation {results['correlation_before']:.3f} -> {results['correlation_after']:.3f}"
    results["summary"] = line + f" -> {run.path}"
    run.write_json("results.json", results)
    run.set_state("complete")
    _say(run, quiet, results["summary"])
    return results


def _curve(cfg: Mapping[str, Any], data: Any) -> Any:
    from modeconn.curves import Curve

    a, b = _model(cfg["a"], data, "A"), _model(cfg["b"], data, "B")
    return Curve(a, b, family=cfg["family"], num_bends=cfg["num_bends"])


@_keeps_caller_rng
def fit(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Fit a curve between A and B with an optimizer plugin: ``out/curve.pt`` (resumable)."""
    cfg, changes = _prepare("fit", config, out, restart)
    _fork_rng()
    from modeconn import distributed
    from modeconn.training import fit_curve, optimizer_options

    optimizer_options(cfg["optimizer"], cfg["options"])

    device = distributed.current().device(cfg["device"])
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

    bn = alignment_subset(data.train, num_samples=min(int(cfg["bn_samples"]), len(data.train)), seed=0)
    test = data.test
    if cfg["test_samples"]:
        test = alignment_subset(test, num_samples=min(int(cfg["test_samples"]), len(test)), seed=0)
    loader = torch.utils.data.DataLoader(test, batch_size=cfg["batch_size"])
    bn_loader = torch.utils.data.DataLoader(bn, batch_size=cfg["batch_size"])
    return loader, bn_loader


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


_MODEL_RUNS = "the run folders of `modeconn train`, `modeconn align` or `modeconn merge`"


def _merge_inputs(cfg: Mapping[str, Any]) -> None:
    """What ``merge`` is given, checked before anything is loaded: two or more run folders
    that hold a model, of one architecture, made on one dataset; one weight per run, each
    finite and at least 0, not all 0; a reference among the runs."""
    runs = cfg.get("runs") or []
    if not runs:
        raise InvalidArgumentError(
            f"merge needs the models to merge: modeconn merge RUN_A RUN_B [RUN_C ...] --out DIR, naming {_MODEL_RUNS}"
        )
    if len(runs) < 2:
        raise InvalidArgumentError(
            f"merge needs at least two runs, got one ({runs[0]!r}): name two or more of {_MODEL_RUNS}"
        )
    models: dict[str, tuple[Any, ...]] = {}
    datasets: dict[str, tuple[str, str | None]] = {}
    for i, text in enumerate(runs):
        name = f"#{i + 1}"
        folder = run_folder_of(text)
        if folder is None:
            if not os.path.exists(text):
                raise InvalidArgumentError(f"run {name} ({text!r}): no such file or folder")
            raise InvalidArgumentError(
                f"run {name} ({text!r}) is not a run folder: merge takes {_MODEL_RUNS}"
            )
        saved = read_config(folder)
        model = saved.get("model")
        if not isinstance(model, Mapping) or "arch" not in model:
            hint = " (export a point of its curve first: modeconn export RUN --t T)" * (
                saved.get("command") == "fit"
            )
            raise InvalidArgumentError(
                f"run {name} ({text!r}) is a `{saved.get('command')}` run, which holds no model{hint}: "
                f"merge takes {_MODEL_RUNS}"
            )
        models[name] = (model["arch"], model.get("num_classes"), model.get("in_chans"))
        data = _recorded_data(folder)
        if data is not None:
            datasets[name] = data[:2]
    if len(set(models.values())) > 1:
        archs = {m[0] for m in models.values()}

        def what(m: tuple[Any, ...]) -> str:
            return m[0] if len(archs) > 1 else f"{m[0]} for {m[1]} classes and {m[2]} input channels"

        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, m in models.items():
            groups.setdefault(m, []).append(name)
        said = ", ".join(
            f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} {what(m)}"
            for m, names in groups.items()
        )
        raise InvalidArgumentError(
            f"the runs are of different architectures ({said}): merge needs models of one architecture"
        )
    if len(set(datasets.values())) > 1:
        said = ", ".join(f"{k} on {d[0]}" + (f" ({d[1]})" if d[1] else "") for k, d in datasets.items())
        raise InvalidArgumentError(
            f"the runs were made on different data ({said}): merge needs models trained on one dataset"
        )
    weights = cfg.get("weights")
    if weights is not None:
        if len(weights) != len(runs):
            raise InvalidArgumentError(
                f"{len(weights)} weight(s) for {len(runs)} runs: give one weight per run, e.g. --weights "
                + ",".join(["1"] * len(runs))
            )
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise InvalidArgumentError(f"merge weights must be finite numbers, got {list(weights)!r}")
            if w < 0:
                raise InvalidArgumentError(
                    f"merge weights must be >= 0, got {list(weights)!r}: a negative weight extrapolates, "
                    "which is not a merge"
                )
        if not sum(weights) > 0:
            raise InvalidArgumentError(f"merge weights must not all be 0, got {list(weights)!r}")
    if cfg["reference"] >= len(runs):
        raise InvalidArgumentError(
            f"reference = {cfg['reference']}: there are {len(runs)} runs, numbered 0 to {len(runs) - 1}"
        )


def _measured(model: Any, loader: Any) -> dict[str, float]:
    from modeconn.metrics import Classification, measure

    values = measure(model, loader, [Classification()])
    return {"test_loss": values["loss"], "test_accuracy": values["accuracy"]}


@_keeps_caller_rng
def merge(
    config: Mapping[str, Any], out: str | os.PathLike, *, quiet: bool = False, restart: bool = False
) -> dict[str, Any]:
    """Merge the models of the run folders ``runs`` (of ``train``, ``align`` or ``merge``; two
    or more, of one architecture and dataset) with :func:`modeconn.merge`: aligned (and, by
    ``repair``, REPAIRed) on ``num_samples`` training samples, BatchNorm statistics recomputed
    on ``bn_samples`` of them, then measured on the test set (or ``test_samples`` of it) like
    each input and the plain averages of the inputs, unaligned and aligned. Writes
    ``out/merged.safetensors`` (a model later steps name by this folder, as a train run's),
    ``perms.json`` (each input's permutation into the common basis) and ``results.json``."""
    cfg, _ = _prepare("merge", config, out, restart, check=_merge_inputs, mutable={"device"})
    _fork_rng()
    from modeconn import distributed
    from modeconn.alignment.costs import COSTS
    from modeconn.batchnorm import has_batchnorm, update_bn
    from modeconn.data import alignment_subset
    from modeconn.merging import average_models
    from modeconn.merging import merge as merge_models
    from modeconn.resolve import model_spec
    from modeconn.training import save_checkpoint

    COSTS.get(cfg["cost"])  # an unknown cost: one line naming the known ones, before any loading
    device = distributed.current().device(cfg["device"])
    data = _open(cfg)
    runs = cfg["runs"]
    models = [_model(r, data, f"#{i + 1}").to(device) for i, r in enumerate(runs)]
    spec = model_spec(runs[0], data)
    _seed(cfg)
    n = min(int(cfg["num_samples"]), len(data.train))
    subset = alignment_subset(data.train, num_samples=n, seed=int(cfg["seed"]))
    bn = alignment_subset(data.train, num_samples=min(int(cfg["bn_samples"]), len(data.train)), seed=0)
    test = data.test
    if cfg["test_samples"]:
        test = alignment_subset(test, num_samples=min(int(cfg["test_samples"]), len(test)), seed=0)
    import torch

    loader = torch.utils.data.DataLoader(test, batch_size=cfg["batch_size"])
    result = merge_models(
        models,
        subset,
        cost=cfg["cost"],
        method=cfg["method"],
        weights=cfg["weights"],
        reference=cfg["reference"],
        repair={"auto": "auto", "yes": True, "no": False}[cfg["repair"]],
        bn_data=bn,
        max_iterations=cfg["max_iterations"],
        seed=int(cfg["seed"]),
        batch_size=cfg["batch_size"],
        device=device,
        progress=not quiet,
    )
    merged = _measured(result.model, loader)
    inputs = [
        {"run": r, "weight": w, **_measured(m, loader)} for r, w, m in zip(runs, result.weights, models)
    ]
    baselines = {}
    for key, group in (("unaligned_average", models), ("aligned_average", result.aligned)):
        plain = average_models(group, result.weights)
        if has_batchnorm(plain):
            update_bn(plain, bn, batch_size=cfg["batch_size"])
        baselines[key] = _measured(plain, loader)
    run = RunFolder(out)
    run.set_state("running")
    run.write_config(
        {"command": "merge", "merge": cfg, "model": {**spec.to_config(), "weights": "merged.safetensors"}}
    )
    if run.main:
        save_checkpoint(result.model, run / "merged.safetensors")
    run.write_json("perms.json", [{g: p.tolist() for g, p in perms.items()} for perms in result.perms])
    repaired = cfg["repair"] != "no"
    results: dict[str, Any] = {
        "method": result.method,
        "cost": result.cost,
        "repaired": repaired,
        "samples": n,
        "bn_samples": len(bn),
        "test_samples": len(test),
        **merged,
        "inputs": inputs,
        "baselines": baselines,
        "history": result.history,
        "notes": result.notes,
    }
    best = max(inputs, key=lambda x: x["test_accuracy"])
    results["summary"] = (
        f"merged {len(runs)} {spec.arch} runs ({result.method}, {result.cost}"
        + (", REPAIR" if repaired else "")
        + f") on {_data_name(data)}: test accuracy {merged['test_accuracy']:.2f}%, loss {merged['test_loss']:.4f} "
        f"(best input {best['test_accuracy']:.2f}%, plain average of the unaligned inputs "
        f"{baselines['unaligned_average']['test_accuracy']:.2f}%) -> {run.path}"
    )
    for note in result.notes:
        run.log(f"note: {note}")
    run.write_json("results.json", results)
    run.set_state("complete")
    _say(run, quiet, results["summary"])
    return results


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
    from modeconn.data import alignment_subset
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
        n = min(int(cfg["bn_samples"]), len(data.train))
        bn = alignment_subset(data.train, num_samples=n, seed=0)  # evaluate's
        bn_data = torch.utils.data.DataLoader(bn, batch_size=cfg["batch_size"])
    # the training split as the dataset gives it (augmented, as evaluate's), its draws seeded:
    # the same export twice is the same model
    torch.manual_seed(0)
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
