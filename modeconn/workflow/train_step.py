"""``modeconn train``: one end point, trained into a run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng, _seed
from modeconn.workflow.settings import _settings
from modeconn.workflow.steps import (
    _data_name,
    _device,
    _history_rows,
    _open,
    _prepare,
    _progress,
    _say,
    _subset,
    _training,
)


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
    from modeconn.metrics import evaluate as measure_model
    from modeconn.resolve import build_model, model_spec
    from modeconn.training import save_checkpoint, train_model

    device = _device(cfg)
    model_spec(cfg["model"])  # a timm or torchvision name is checked before the data loads
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
