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

from modeconn.curves.family import CurveFamily
from modeconn.errors import ModeconnError, PluginError
from modeconn.evaluation import architecture_difference, lerp_state, update_bn
from modeconn.plugin_manager import get_plugin

__all__ = ["Curve"]


class Curve(nn.Module):
    """A curve from ``model_a`` (t = 0) to ``model_b`` (t = 1) in weight space.

    The end points are frozen copies; the ``num_bends`` bends are the learnable parameters and
    start on the segment between the end points (the paper's linear initialization). ``family``
    names a curve-family plugin: ``"bezier"`` (default; one bend is the paper's quadratic curve),
    ``"polychain"`` or ``"linear"`` (no bend). ``curve(x, t)`` runs the network at ``r(t)``.

    BatchNorm: in train mode the network normalizes with batch statistics; in eval mode it uses
    the end points' running statistics interpolated linearly in t — a stand-in until
    :meth:`model_at` recomputes them with ``bn_data``.
    """

    def __init__(
        self, model_a: nn.Module, model_b: nn.Module, family: str = "bezier", num_bends: int | None = None
    ):
        super().__init__()
        entry = get_plugin("curve", family)
        if not isinstance(entry.obj, CurveFamily):
            raise PluginError(
                f"curve plugin {family!r} (from plugin {entry.plugin!r}) is not a CurveFamily instance"
            )
        self.family_name = family
        self.family: CurveFamily = entry.obj
        if num_bends is None:
            num_bends = self.family.default_bends
        if self.family.fixed_bends is not None and num_bends != self.family.fixed_bends:
            raise ModeconnError(
                f"curve family {family!r} has exactly {self.family.fixed_bends} bends, not {num_bends}"
            )
        if num_bends < 0:
            raise ModeconnError(f"num_bends must be >= 0, got {num_bends}")
        self.num_bends = num_bends

        sa, sb = model_a.state_dict(), model_b.state_dict()
        if (where := architecture_difference(sa, sb)) is not None:
            raise ModeconnError(
                f"model_b differs from model_a at {where}; a curve joins two models of one architecture"
            )
        self.base = copy.deepcopy(model_a)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.param_names = [n for n, _ in model_a.named_parameters()]
        param_set = set(self.param_names)
        self.buffer_names = [n for n in sa if n not in param_set]
        # end points: frozen, kept as buffers (saved with the curve, never trained)
        self.ends = nn.ModuleList()
        for state in (sa, sb):
            self.ends.append(
                _Frozen({n: state[n] for n in self.param_names}, {n: state[n] for n in self.buffer_names})
            )
        self.bends = nn.ModuleList()
        for s in self.family.bend_times(num_bends):
            point = {
                n: torch.lerp(sa[n].detach().float(), sb[n].detach().float(), s).to(sa[n].dtype)
                for n in self.param_names
            }
            self.bends.append(_Bend(point))

    # -- weights along the curve --------------------------------------------------------------
    def coefficients(self, t: float | torch.Tensor) -> torch.Tensor:
        return self.family.coefficients(torch.as_tensor(float(t)), self.num_bends)

    def control_points(self) -> list[dict[str, torch.Tensor]]:
        """θ_A, the bends, θ_B: dicts of parameters (bends are the live, trainable tensors)."""
        return [self.ends[0].params(), *[b.params() for b in self.bends], self.ends[1].params()]

    def weights(self, t: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters at ``t``, differentiable with respect to the bends."""
        coeffs = self.coefficients(t)
        points = self.control_points()
        out = {}
        for name in self.param_names:
            total = None
            for c, point in zip(coeffs.tolist(), points):
                if c == 0.0:
                    continue  # keeps r(0) and r(1) exactly the end points
                term = point[name] if c == 1.0 else c * point[name]
                total = term if total is None else total + term
            out[name] = total if total is not None else torch.zeros_like(points[0][name])
        return out

    def buffers_at(self, t: float) -> dict[str, torch.Tensor]:
        """The end points' buffers (BatchNorm statistics) interpolated linearly in t."""
        return lerp_state(self.ends[0].buffers_dict(), self.ends[1].buffers_dict(), float(t))

    @torch.no_grad()
    def state_at(self, t: float) -> dict[str, torch.Tensor]:
        """The base model's full state dict at ``t`` (detached): ``r(t)``'s parameters and the
        end points' buffers interpolated linearly."""
        state = {k: v.detach().clone() for k, v in self.weights(t).items()}
        state.update(self.buffers_at(t))
        return state

    def forward(self, x: Any, t: float | torch.Tensor) -> Any:
        state = self.weights(t)
        if not self.training:
            state.update(self.buffers_at(float(t)))
        return functional_call(self.base, state, (x,))

    def model_at(self, t: float, bn_data: Any = None) -> nn.Module:
        """A plain model with ``r(t)``'s weights; BatchNorm statistics are recomputed on
        ``bn_data`` when given (otherwise interpolated from the end points)."""
        model = copy.deepcopy(self.base)
        model.load_state_dict(self.state_at(t))
        for p in model.parameters():
            p.requires_grad_(True)
        if bn_data is not None:
            update_bn(model, bn_data)
        return model.eval()

    def extra_repr(self) -> str:
        return f"family={self.family_name!r}, num_bends={self.num_bends}, parameters={len(self.param_names)}"


def _safe(name: str) -> str:
    return name.replace(".", "__")


class _Frozen(nn.Module):
    """An end point: its parameters and buffers, stored as (non-trainable) buffers."""

    def __init__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
        super().__init__()
        self._param_names, self._buffer_names = list(params), list(buffers)
        for n, v in params.items():
            self.register_buffer("p_" + _safe(n), v.detach().clone())
        for n, v in buffers.items():
            self.register_buffer("b_" + _safe(n), v.detach().clone())

    def params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, "p_" + _safe(n)) for n in self._param_names}

    def buffers_dict(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, "b_" + _safe(n)) for n in self._buffer_names}


class _Bend(nn.Module):
    """One learnable control point."""

    def __init__(self, point: dict[str, torch.Tensor]):
        super().__init__()
        self._names = list(point)
        self.values = nn.ParameterList([nn.Parameter(v.clone()) for v in point.values()])

    def params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self._names, self.values))
