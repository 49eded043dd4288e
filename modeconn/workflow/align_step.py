"""``modeconn align``: model B aligned to model A, into a run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from modeconn.runs import RunFolder
from modeconn.workflow.rng import _fork_rng, _keeps_caller_rng, _seed
from modeconn.workflow.steps import (
    _model,
    _open,
    _prepare,
    _say,
)


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
    n = min(int(cfg["num_samples"]), len(data.plain))
    subset = alignment_subset(data.plain, num_samples=n, seed=int(cfg["seed"]))
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
