"""Built-in curve optimizer: ``sgd`` (a fresh t ~ U[0, 1] per batch, paper Algorithm 2)."""

from __future__ import annotations

from modeconn.plugin import CurveOptimizer, hookimpl


@hookimpl
def modeconn_register_optimizers(registry) -> None:
    registry.add("sgd", CurveOptimizer)
