"""Recording what a captured graph computes: one real run, every node's output structure."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.capture.inputs import ModelInputs
from modeconn.errors import TraceError

__all__ = ["record_values", "FieldTuple"]


@contextlib.contextmanager
def _preserved_state(model: nn.Module):
    """Run something that may update buffers (train-mode BatchNorm) and undo it afterwards."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if v is not None}
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                if k in saved and not torch.equal(v, saved[k]):  # untouched ones may be read-only views
                    v.copy_(saved[k])


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps, for every node, the structure of its output."""

    def __init__(self, gm: fx.GraphModule, describe: Callable[[], str]):
        super().__init__(gm)
        self.shapes: dict[str, Any] = {}
        self.dtypes: dict[str, torch.dtype] = {}  # of the nodes that return one tensor
        self._describe = describe

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            raise TraceError(
                f"the traced graph failed at node {n.format_node()}: {type(e).__name__}: {e}. "
                f"Check that the example inputs have the shapes and dtypes the model expects "
                f"({self._describe()})."
            ) from e
        self.shapes[n.name] = _summary(result)
        if isinstance(result, torch.Tensor):
            self.dtypes[n.name] = result.dtype
        return result


def record_values(
    gm: fx.GraphModule,
    inputs: ModelInputs,
    float_dtype: torch.dtype | None,
    dtypes: dict[str, torch.dtype] | None = None,
) -> dict[str, Any]:
    """Run the graph once and return, for every node, the structure of its output with tensors
    replaced by :class:`torch.Size` (other values are kept when they are small Python values);
    ``dtypes``, if given, receives the dtype of every node that returns one tensor.

    The run is real, not on fake or meta tensors: those take other code paths in some modules
    (``nn.MultiheadAttention``'s fast path returns other outputs), and the structure recorded
    here is what the rules trust."""

    def describe() -> str:
        dtype = f"; the model's parameters are {float_dtype}" if float_dtype is not None else ""
        return f"given: {inputs.describe()}{dtype}"

    recorder = _Recorder(gm, describe)
    # only a train-mode run changes buffers (BatchNorm statistics); eval needs no snapshot. An
    # exported graph's mode is the one it was captured in, whatever its `training` flag says.
    changes = gm.training or gm.meta.get("capture") == "export"
    with _preserved_state(gm) if changes else torch.no_grad():
        recorder.run(*inputs.values)
    if dtypes is not None:
        dtypes.update(recorder.dtypes)
    return recorder.shapes


class FieldTuple(tuple):
    """A recorded tuple that had field names (``torch.return_types.max``: values, indices)."""

    _fields: tuple[str, ...] = ()


def _summary(result: Any) -> Any:
    """A node's output with tensors replaced by their ``torch.Size`` (so a ``torch.Size`` value
    itself, ``x.shape``, becomes a plain tuple of ints)."""
    if isinstance(result, torch.Size):
        return tuple(result)
    if isinstance(result, tuple):
        fields = getattr(type(result), "__match_args__", None)  # structseq and namedtuple outputs
        if fields:
            out = FieldTuple(_summary(v) for v in result)
            out._fields = tuple(fields)
            return out
        return tuple(_summary(v) for v in result)
    if isinstance(result, list):
        return [_summary(v) for v in result]
    if isinstance(result, dict):
        return {k: _summary(v) for k, v in result.items()}
    return _summarize(result)


def _summarize(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, slice)):
        return value
    return type(value)
