"""``modeconn merge``: the models of two or more run folders merged into one, into a run folder."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, read_config, run_folder_of
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng, _seed
from modeconn.workflow.steps import (
    _MODEL_RUNS,
    _bn_samples,
    _data_name,
    _model,
    _open,
    _prepare,
    _recorded_data,
    _say,
)


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
    n = min(int(cfg["num_samples"]), len(data.plain))
    subset = alignment_subset(data.plain, num_samples=n, seed=int(cfg["seed"]))
    bn = _bn_samples(data, cfg["bn_samples"])
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
