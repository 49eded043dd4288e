"""The second capture path: a model's graph from ``torch.export``, for models torch.fx cannot
trace symbolically (Hugging Face transformers: data-dependent checks in masking utilities,
proxies iterated, slicing by traced sizes).

``torch.export`` runs the model on the example inputs and records the ATen ops it calls; the
unlifted graph (:meth:`torch.export.ExportedProgram.module`) reads the model's own parameters
and buffers as attributes under their state-dict names, so discovery binds them exactly as on
an fx graph, and ``permute`` and ``align`` act on the user's model. The graph is specialized
to the mode it was captured in and to the example inputs' shapes, except the batch size and the
length of integer inputs (token ids), which are declared dynamic when the inputs allow it
(alignment feeds batches of other sizes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.capture.inputs import ModelInputs
from modeconn.errors import TraceError

__all__ = ["export_graph"]


def export_graph(model: nn.Module, inputs: ModelInputs) -> fx.GraphModule:
    """``model``'s graph in its current mode as ``torch.export`` records it for ``inputs``
    (non-strict, so that Python-level code runs as written). Raises :class:`TraceError` with
    torch.export's reason when the model cannot be exported."""
    with _without_cache(model):
        try:
            program = _export(model, inputs, dynamic=True)
        except Exception:
            try:  # inputs whose names are not forward's parameters (``*args``)
                program = _export(model, inputs, dynamic=False)
            except Exception as e:
                raise TraceError(
                    f"torch.export could not capture {type(model).__name__}: {type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                ) from e
    gm = program.module()
    gm.meta["one_layer"] = False
    gm.meta["opaque"] = {}
    gm.meta["capture"] = "export"
    return gm


def _export(model: nn.Module, inputs: ModelInputs, *, dynamic: bool) -> Any:
    k = inputs.num_positional
    args, kwargs = tuple(inputs.values[:k]), dict(zip(inputs.names[k:], inputs.values[k:]))
    shapes = None
    tensors = [v for v in inputs.values if isinstance(v, torch.Tensor)]
    if dynamic and tensors and all(t.ndim > 0 and t.shape[0] == tensors[0].shape[0] for t in tensors):
        # by forward parameter name; Dim.AUTO lets export keep a size static where the code
        # needs it. Integer inputs (token ids, masks) may change length too: sequences of
        # another length are common, images of another size are not what a spec is about.
        shapes = {n: _dynamic_axes(v) for n, v in zip(inputs.names, inputs.values)}
    return torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)


def _dynamic_axes(value: Any) -> dict[int, Any] | None:
    if not isinstance(value, torch.Tensor):
        return None
    axes = range(value.ndim) if not value.is_floating_point() else range(1)
    return {axis: torch.export.Dim.AUTO for axis in axes}


@contextlib.contextmanager
def _without_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models return their key/value cache unless ``config.use_cache`` is off; a
    cache is not a model output to keep, and torch.export cannot return its type. Submodules
    may hold configs of their own (T5's decoder stack has a copy)."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    on = [c for c in configs.values() if getattr(c, "use_cache", False)]
    for c in on:
        c.use_cache = False
    try:
        yield
    finally:
        for c in on:
            c.use_cache = True
