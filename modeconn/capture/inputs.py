"""What a model is called with: inputs matched to its ``forward`` parameters, on its device
and in its dtype."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import SymmetryError, TraceError
from modeconn.modules import device_of, float_dtype_of

__all__ = ["ModelInputs", "model_inputs"]


class ModelInputs:
    """The inputs a model is called with, matched to its ``forward`` parameters.

    ``names`` are the graph's placeholders in call order; the first ``num_positional`` are
    passed positionally, the rest by name. Built from a tensor, a tuple of tensors (the first
    positional parameters) or a dict (parameters by name, the Hugging Face convention).
    """

    def __init__(self, model: nn.Module, inputs: Any):
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if isinstance(inputs, Mapping):
            self.names, self.values, self.num_positional = tuple(inputs), tuple(inputs.values()), 0
            params = _forward_parameters(model)
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                unknown = [k for k in self.names if k not in params]
                if unknown:
                    raise TraceError(
                        f"{type(model).__name__}.forward has no parameter {unknown[0]!r} (it takes "
                        f"{', '.join(params) or 'nothing'}); the keys of dict inputs must be its parameter names"
                    )
            # the graph's placeholders follow the signature's order, as fx's calls them
            order = {name: i for i, name in enumerate(params)}
            pairs = sorted(zip(self.names, self.values), key=lambda kv: order.get(kv[0], len(order)))
            self.names, self.values = tuple(k for k, _ in pairs), tuple(v for _, v in pairs)
        else:
            values = tuple(inputs)
            names = []
            for i, p in enumerate(_forward_parameters(model).values()):
                if len(names) == len(values):
                    break
                if p.kind is p.VAR_POSITIONAL:
                    names += [f"{p.name}_{k}" for k in range(len(values) - len(names))]
                    break
                if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD):
                    break
                names.append(p.name if p.name.isidentifier() else f"input_{i}")
            if len(names) < len(values):
                raise TraceError(
                    f"{type(model).__name__}.forward takes {len(names)} positional input(s), "
                    f"but {len(values)} example inputs were given"
                )
            self.names, self.values, self.num_positional = tuple(names), values, len(values)

    def __len__(self) -> int:
        return len(self.values)

    def map(self, fn: Callable[[Any], Any]) -> ModelInputs:
        """The same inputs with ``fn`` applied to each value."""
        new = object.__new__(ModelInputs)
        new.names, new.num_positional = self.names, self.num_positional
        new.values = tuple(fn(v) for v in self.values)
        return new

    def call(self, fn: Callable) -> Any:
        """``fn`` called with these inputs, positionally or by name as given."""
        k = self.num_positional
        return fn(*self.values[:k], **dict(zip(self.names[k:], self.values[k:])))

    def describe(self) -> str:
        parts = []
        for name, v in zip(self.names, self.values):
            if isinstance(v, torch.Tensor):
                parts.append(f"{name}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}")
            else:
                parts.append(f"{name}: {type(v).__name__}")
        return ", ".join(parts)


def _forward_parameters(model: nn.Module) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(model.forward).parameters)  # follows functools.wraps


def model_inputs(model: nn.Module, example_inputs: Any) -> ModelInputs:
    """``example_inputs`` (a tensor, a tuple of tensors or a dict of them; ``None`` for a timm
    model, which says its input size) matched to ``model``'s forward, on its device, floating
    tensors in its dtype."""
    if example_inputs is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if size is None:
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            example = (
                f"{{'input_ids': torch.randint(0, {vocab}, (1, 16))}}"
                if isinstance(vocab, int)
                else "torch.randn(1, 3, 32, 32)"
            )
            raise SymmetryError(
                f"discover needs example_inputs for {type(model).__name__}: the model does not say "
                f"its input size (no timm default_cfg). Pass e.g. example_inputs={example}."
            )
        example_inputs = torch.randn(1, *size)
    if not isinstance(example_inputs, (torch.Tensor, tuple, list, Mapping)):
        raise SymmetryError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of them, not {type(example_inputs).__name__}"
        )
    inputs = ModelInputs(model, example_inputs)
    if not len(inputs):
        raise SymmetryError("example_inputs is empty: give the model's inputs (a tensor, a tuple or a dict)")
    device, dtype = device_of(model), float_dtype_of(model)

    def place(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        return x.to(device=device, dtype=dtype if x.is_floating_point() and dtype is not None else x.dtype)

    return inputs.map(place)
