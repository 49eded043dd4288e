"""``Curve``: a low-loss path between two models, for any architecture.

Rather than a curve version of every layer type (as the paper's and Garipov's code have), each
parameter is a combination of its control points, ``r(t) = Σ_j c_j(t) P_j`` (paper eq. 1 and 7),
and the base model runs with those weights through ``torch.func.functional_call``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from modeconn.batchnorm import update_bn
from modeconn.curves.family import CURVE_FAMILIES, CurveFamily
from modeconn.errors import InvalidArgumentError
from modeconn.modules import tensor_aliases, unwrap
from modeconn.state import check_same_architecture, lerp_state

__all__ = ["Curve"]


class Curve(nn.Module):
    """A curve from ``model_a`` (t = 0) to ``model_b`` (t = 1) in weight space.

    The end points are frozen copies; the ``num_bends`` bends are the learnable parameters and
    start on the segment between the end points (the paper's linear initialization). ``family``
    names a curve-family plugin: ``"bezier"`` (default; one bend is the paper's quadratic curve),
    ``"polychain"`` or ``"linear"`` (no bend) — or is a :class:`CurveFamily` instance. ``curve(x, t)`` runs the network at ``r(t)``.

    Storage: ``ends`` (a 2 × P buffer) and ``bends`` (a num_bends × P parameter) hold the
    flattened parameters in ``param_names`` order; :meth:`control_points` gives them as dicts.

    BatchNorm: in train mode the network normalizes with batch statistics; in eval mode it uses
    the end points' running statistics interpolated linearly in t — a stand-in until
    :meth:`model_at` recomputes them with ``bn_data``.

    Memory: the curve holds θ_A and θ_B (the size of both models) and the bends. With
    ``share=True`` the end points are not copies: the models' parameters become views of the
    curve's rows, so the pair is held once (for models that barely fit twice). The models keep
    computing as before, but they and the curve then share their weights: changing a model's
    parameters changes the curve's end point, and an optimizer that replaces an end point
    (``pam`` puts a permuted B there) replaces that model's weights.
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        family: str | CurveFamily = "bezier",
        num_bends: int | None = None,
        *,
        share: bool = False,
    ):
        super().__init__()
        entry = CURVE_FAMILIES.resolve(family, "Curve")  # a CurveFamily that keeps the curve law
        self._family_entry = entry
        self.family_name = entry.name
        self.family: CurveFamily = entry.obj
        if num_bends is None:
            num_bends = self.family.default_bends
        if self.family.fixed_bends is not None and num_bends != self.family.fixed_bends:
            raise InvalidArgumentError(
                f"curve family {family!r} has exactly {self.family.fixed_bends} bends, not {num_bends}"
            )
        if num_bends < 0:
            raise InvalidArgumentError(f"num_bends must be >= 0, got {num_bends}")
        self.num_bends = num_bends

        model_a, model_b = unwrap(model_a), unwrap(model_b)
        sa, sb = model_a.state_dict(), model_b.state_dict()
        check_same_architecture(sa, sb)
        # a tied tensor (``proj.weight = emb.weight``) is one parameter under its first name;
        # state dicts list it under every name, so they are rebuilt from these on the way out
        self.param_names = [n for n, _ in model_a.named_parameters()]
        self.buffer_names = [n for n, _ in model_a.named_buffers() if n in sa]  # persistent ones
        self._aliases = tensor_aliases(model_a)
        dtypes = {sa[n].dtype for n in self.param_names}
        dtypes_b = {sb[n].dtype for n in self.param_names}
        if len(dtypes) == 1 and dtypes != dtypes_b:
            raise InvalidArgumentError(
                f"model_a's parameters are {min(map(str, dtypes))} and model_b's {min(map(str, dtypes_b))}: "
                "a curve needs both in one dtype; convert one first, e.g. model_b.to(torch.float32)"
            )
        if len(dtypes) > 1:
            raise InvalidArgumentError(
                f"a curve needs all parameters in one dtype, got {sorted(map(str, dtypes))}; "
                "convert both models first, e.g. model.float()"
            )
        self._shapes = [sa[n].shape for n in self.param_names]
        self._numels = [sa[n].numel() for n in self.param_names]
        # Control points are flat vectors, one row each: r(t) is one weighted sum over a few
        # rows however many tensors the model has (per-tensor sums made a ResNet32 step ~20% slower).
        # Every row is written in place, tensor by tensor: no model-sized temporary.
        first = sa[self.param_names[0]] if self.param_names else torch.empty(0)
        ends = first.new_empty(2, sum(self._numels))
        for row, model, state in zip(ends, (model_a, model_b), (sa, sb)):
            params = dict(model.named_parameters())
            for part, name, shape in zip(row.split(self._numels), self.param_names, self._shapes):
                part.copy_(state[name].detach().reshape(-1))
                if share and name in params:  # the tensor now lives in the row; its old storage is freed
                    params[name].data = part.view(shape)
                    state.update(
                        {k: params[name].detach() for k in self._aliases if self._aliases[k] == name}
                    )
        self.register_buffer("ends", ends)  # θ_A and θ_B: saved with the curve, never trained
        times = entry.invoke(self.family.bend_times, num_bends)
        bends = ends.new_empty(len(times), ends.shape[1])
        for row, s in zip(bends, times):
            for part, a, b in zip(
                row.split(self._numels), ends[0].split(self._numels), ends[1].split(self._numels)
            ):
                part.copy_(torch.lerp(a.float(), b.float(), s))  # per tensor: float32 bends of half models
        self.bends = nn.Parameter(bends, requires_grad=num_bends > 0)  # one row per bend
        # The base model runs with the curve's weights (functional_call): its own parameters are
        # never read, so they are views of θ_A, not a copy of it (see _base_from_ends).
        views = dict(zip(self.param_names, self._unflatten(ends[0]).values()))
        memo = {id(p): nn.Parameter(views[n], requires_grad=False) for n, p in model_a.named_parameters()}
        self.base = copy.deepcopy(model_a, memo)
        self.register_load_state_dict_pre_hook(_base_from_ends)
        self.end_buffers = nn.ModuleList(_Buffers({n: st[n] for n in self.buffer_names}) for st in (sa, sb))
        self._parametrization = None

    def _apply(self, fn: Any, recurse: bool = True) -> Curve:
        # ``.to()`` and ``.half()`` convert the base's parameters on their own: make them views of
        # the converted θ_A again, so that the curve holds θ_A once
        super()._apply(fn, recurse)
        with torch.no_grad():
            rows = dict(zip(self.param_names, self._unflatten(self.ends[0]).values()))
            for name, p in self.base.named_parameters():
                if p.dtype == self.ends.dtype and p.device == self.ends.device:
                    p.data = rows[name]
        return self

    # -- weights along the curve --------------------------------------------------------------
    def coefficients(self, t: float | torch.Tensor) -> torch.Tensor:
        """The family's ``num_bends + 2`` coefficients at ``t`` (θ_A's first, θ_B's last); ``t``
        must lie in [0, 1] (a curve is not extrapolated)."""
        if not 0.0 <= float(t) <= 1.0:
            raise InvalidArgumentError(
                f"t = {float(t)} is off the curve: t runs from 0 (model A) to 1 (model B)"
            )
        return self._family_entry.invoke(self.family.coefficients, torch.as_tensor(float(t)), self.num_bends)

    def _rows(self) -> list[torch.Tensor]:
        """The flat control points in curve order: θ_A, the bends, θ_B (as a parametrization
        gives them, when one is set)."""
        if self._parametrization is not None:
            return list(self._parametrization(self))
        return [self.ends[0], *self.bends, self.ends[1]]

    def control_points(self) -> list[dict[str, torch.Tensor]]:
        """θ_A, the bends, θ_B: dicts of parameters (views; the bends' are trainable)."""
        return [self._unflatten(row) for row in self._rows()]

    # -- seams for optimizers that change the end points ------------------------------------
    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """A state dict's parameters as one row in this curve's order (``ends`` and ``bends``
        rows are such rows)."""
        return torch.cat([state[n].reshape(-1) for n in self.param_names]).to(self.ends)

    def unflatten(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """A row as a dict of parameters (views of the row)."""
        return self._unflatten(row)

    def end_state(self, which: int) -> dict[str, torch.Tensor]:
        """The full state dict of end point ``which`` (0: θ_A, 1: θ_B), buffers included."""
        state = {k: v.detach().clone() for k, v in self._unflatten(self.ends[which]).items()}
        state.update({k: v.clone() for k, v in self.end_buffers[which].tensors().items()})
        return {name: state[canonical] for name, canonical in self._aliases.items()}

    @torch.no_grad()
    def set_end(self, which: int, state: dict[str, torch.Tensor]) -> None:
        """Replace end point ``which`` (0: θ_A, 1: θ_B) by the parameters and buffers of
        ``state`` (a state dict of the same architecture): PAM puts a permuted B here."""
        check_same_architecture(state, self.end_state(which), what="the new end point", of="the old one")
        self.ends[which].copy_(self.flatten(state))
        for name, buf in self.end_buffers[which].tensors().items():
            buf.copy_(state[name])

    @property
    def parametrization(self) -> Any:
        """The function set by :meth:`set_parametrization`, or ``None``."""
        return self._parametrization

    def set_parametrization(self, rows: Any = None) -> None:
        """Make the control points a function of other tensors: ``rows(curve)`` returns the
        ``num_bends + 2`` flat rows (θ_A, the bends, θ_B) that :meth:`weights` combines, and
        gradients flow to whatever it uses (PAM's relaxed permutations of θ_B). ``None``
        restores the stored ``ends`` and ``bends``."""
        self._parametrization = rows

    def weights(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters at ``t``, differentiable with respect to the bends."""
        terms = [(c, row) for c, row in zip(self.coefficients(t).tolist(), self._rows()) if c != 0.0]
        if not terms:
            return self._unflatten(torch.zeros_like(self.ends[0]))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return self._unflatten(terms[0][1])  # r(0) and r(1) are exactly the end points
        # one model-sized result, accumulated in place: c * row for every term at once would
        # hold a model-sized temporary per control point
        (c, row), *rest = terms
        total = row * c
        for c, row in rest:
            total = total.add_(row, alpha=c)
        return self._unflatten(total)

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(self._numels)
        return {n: part.view(shape) for n, part, shape in zip(self.param_names, parts, self._shapes)}

    def buffers_at(self, t: float) -> dict[str, torch.Tensor]:
        """The end points' buffers (BatchNorm statistics) interpolated linearly in t."""
        return lerp_state(self.end_buffers[0].tensors(), self.end_buffers[1].tensors(), float(t))

    @torch.no_grad()
    def state_at(self, t: float) -> dict[str, torch.Tensor]:
        """The base model's full state dict at ``t`` (detached): ``r(t)``'s parameters and the
        end points' buffers interpolated linearly, every name of a tied tensor included."""
        return self.state_of(torch.cat([w.reshape(-1) for w in self.weights(t).values()]), t)

    @torch.no_grad()
    def state_of(self, row: torch.Tensor, buffers_t: float = 0.0) -> dict[str, torch.Tensor]:
        """The base model's full state dict for any flat parameter ``row`` (a point of weight
        space in this curve's coordinates, e.g. on the plane through its control points), with
        the end points' buffers interpolated at ``buffers_t``."""
        state = {k: v.detach().clone() for k, v in self._unflatten(row).items()}
        state.update(self.buffers_at(buffers_t))
        return {name: state[canonical] for name, canonical in self._aliases.items()}

    def forward(self, x: Any, t: float | torch.Tensor) -> Any:
        """The network at ``r(t)`` on ``x`` (a tensor, or a tuple / dict of inputs)."""
        return self._run(self.weights(t), x, t)

    def function_at(self, t: float) -> Any:
        """The network at ``r(t)`` as a function of its inputs, with ``r(t)`` computed once and
        held fixed (no gradient reaches the bends): what an attack at ``t`` runs many times.
        It follows the curve's train/eval mode as ``forward`` does."""
        with torch.no_grad():
            state = {k: v.detach() for k, v in self.weights(t).items()}
        return lambda x: self._run(dict(state), x, t)

    def _run(self, state: dict[str, torch.Tensor], x: Any, t: float | torch.Tensor) -> Any:
        if not self.training:
            state.update(self.buffers_at(float(t)))
        if isinstance(x, dict):
            return functional_call(self.base, state, (), x)
        return functional_call(self.base, state, x if isinstance(x, tuple) else (x,))

    def model_at(self, t: float, bn_data: Any = None) -> nn.Module:
        """The network at ``t`` as a standalone ``nn.Module`` (a copy of the base model, in eval
        mode, sharing no storage with the curve): its parameters are the curve's point
        ``r(t) = Σ_j c_j(t) P_j`` — the family's coefficients at ``t`` times the control points
        θ_A, the bends, θ_B, as :meth:`weights` gives them (so θ_A at t = 0 and θ_B at t = 1) —
        detached and trainable again (``requires_grad``). Its buffers are the end points'
        interpolated linearly in ``t`` (:meth:`buffers_at`; integer ones such as
        ``num_batches_tracked`` are θ_A's), so it computes what ``curve(x, t)`` computes in
        eval mode; with ``bn_data`` its BatchNorm running statistics are instead recomputed on
        that data (:func:`modeconn.update_bn`). ``t`` must lie in [0, 1]."""
        model = copy.deepcopy(self.base)
        model.load_state_dict(self.state_at(t))
        for p in model.parameters():
            p.requires_grad_(True)
        if bn_data is not None:
            update_bn(model, bn_data)
        return model.eval()

    def extra_repr(self) -> str:
        return f"family={self.family_name!r}, num_bends={self.num_bends}, parameters={len(self.param_names)}"


def _base_from_ends(module: Curve, state_dict: dict, prefix: str, *args: Any) -> None:
    """The base model's parameters are views of θ_A (``ends[0]``): when a state dict is loaded,
    they are loaded from its θ_A, so a checkpoint whose base held other values (one written
    before the base shared θ_A, after ``set_end(0, ...)``) cannot leave them inconsistent."""
    ends = state_dict.get(prefix + "ends")
    if ends is None or ends.dim() != 2:
        return
    views = {
        name: part.view(shape)
        for name, part, shape in zip(module.param_names, ends[0].split(module._numels), module._shapes)
    }
    for name, canonical in module._aliases.items():  # a tied tensor under each of its names
        if canonical in views:
            state_dict[f"{prefix}base.{name}"] = views[canonical]


class _Buffers(nn.Module):
    """An end point's buffers (BatchNorm statistics), kept under names without dots."""

    def __init__(self, buffers: dict[str, torch.Tensor]):
        super().__init__()
        self._names = list(buffers)
        for n, v in buffers.items():
            self.register_buffer(n.replace(".", "__"), v.detach().clone())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n.replace(".", "__")) for n in self._names}
