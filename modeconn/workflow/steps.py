"""What the steps of the workflow share: the runs, data and models a step reads, the checks it
makes before it runs, its run's state while it trains, and the line it ends with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, describe_state, read_config, refuse_overwriting, run_folder_of, run_state
from modeconn.workflow.settings import DEFAULTS, MUTABLE, resolved


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


def _device(cfg: Mapping[str, Any]) -> Any:
    """The device a training step runs on, checked against ``sync_bn``."""
    import warnings

    from modeconn import distributed

    strategy = distributed.current()
    device = strategy.device(cfg["device"])
    if cfg.get("sync_bn"):
        if device.type not in ("cuda", "xpu"):
            raise InvalidArgumentError(
                f"--sync-bn needs CUDA or XPU devices, not {device.type}: PyTorch's SyncBatchNorm "
                "synchronizes GPU tensors only (on CPU each rank keeps its own BatchNorm statistics)"
            )
        if strategy.world_size == 1:
            warnings.warn("--sync-bn does nothing in one process: run under torchrun", stacklevel=3)
    return device


def _bn_samples(data: Any, n: int) -> Any:
    """The ``n`` training samples BatchNorm statistics are recomputed on: augmented as the models
    were trained, each image's draw fixed, so that one model measured twice (at the end of a
    curve, of a line, by export) gets the same statistics."""
    from modeconn.data import FixedDraws, alignment_subset

    return FixedDraws(alignment_subset(data.train, num_samples=min(int(n), len(data.train)), seed=0))


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
    _check_model_names(step, cfg)
    if step != "train":
        cfg = _with_data(cfg)
    refuse_overwriting(out, _inputs(cfg))
    changes = RunFolder.check(out, step, cfg, mutable=mutable, restart=restart, defaults=DEFAULTS[step])
    return cfg, changes


def _check_model_names(step: str, cfg: Mapping[str, Any]) -> None:
    """A misspelt model or run name, reported before torch loads (the registry needs it)."""
    from modeconn.resolve import check_model_name

    names = [cfg.get("model"), *(cfg.get("line") or ())]
    if step in ("align", "fit"):
        names += [cfg.get("a"), cfg.get("b")]
    for text in names:
        if isinstance(text, str) and text:
            check_model_name(text)


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


_MODEL_RUNS = "the run folders of `modeconn train`, `modeconn align` or `modeconn merge`"
