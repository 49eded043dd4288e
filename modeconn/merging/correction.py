"""REPAIR (Jordan et al., ICLR 2023): the statistics correction of a merged or interpolated
model, folded into its own layers.

Averaging aligned networks shrinks the variance of their hidden units ("variance collapse"),
which is most of what a plain average loses. REPAIR resets every hidden unit's mean and
standard deviation to the weighted average of the references' (the aligned end points):
``y' = (y - μ) · σ_t / σ + μ_t`` with ``μ_t = Σ w_i μ_i`` and ``σ_t = Σ w_i σ_i``. The
correction is affine per unit, so it is folded into the layer that produces the unit (the
output rows and bias of a Linear or convolution, the affine parameters of a norm) and the
repaired model has the class, modules and state-dict keys it had.

Where a unit's producer is followed only by a BatchNorm, the BatchNorm is the one corrected
(its output is what the next layer sees). Units are corrected in one pass over the data, in
the order the model computes them: during that pass each corrected layer normalizes its output
with the batch's statistics, as REPAIR's reset layers do in train mode, so every layer is
measured after the layers before it have been corrected.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from modeconn.batchnorm import has_batchnorm, update_bn
from modeconn.data.batches import batches, call_model
from modeconn.errors import DataError, InvalidArgumentError
from modeconn.modules import device_of, float_dtype_of, modes_restored, unwrap
from modeconn.state import check_same_architecture

__all__ = ["repair", "ReferenceStatistics", "correction_sites"]

_RELATIVE_EPS = 1e-6  # of the target variance: a (nearly) constant unit's scale stays finite
_TINY = 1e-30  # and a unit whose target is constant too gets scale 0, its target mean


def _scale(std_t: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``σ_t / σ`` per unit, the variance floored relative to the target's: an absolute floor
    (BatchNorm's ε) would shrink units whose scale is below it (GPT-2's residual projections
    at init have σ ≈ 1e-3)."""
    return std_t / (var + _RELATIVE_EPS * std_t * std_t + _TINY).sqrt()


_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


def _unit_axis(module: nn.Module) -> tuple[int, int] | None:
    """(axis of the output holding the units, axis of ``weight`` holding them), or ``None``
    for a module the correction cannot be folded into."""
    if isinstance(module, _CHANNELS_FIRST):
        return 1, 0
    if isinstance(module, nn.LayerNorm):
        return (-1, 0) if len(module.normalized_shape) == 1 else None
    if isinstance(module, nn.Linear):
        return -1, 0
    # Hugging Face's Conv1D (GPT-2): a Linear with its weight stored (in, out)
    if type(module).__name__ == "Conv1D" and getattr(module, "nf", None) is not None:
        return -1, 1
    return None


@dataclass
class _Moments:
    """Per-unit sums of one layer's output over the data, in float64, added up from each
    batch's mean and variance (computed in the batch's precision, in one pass)."""

    n: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def add(self, y: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch; returns its per-unit (variance, mean), shaped to broadcast against ``y``."""
        dims = [d for d in range(y.ndim) if d != axis % y.ndim]
        var, mean = torch.var_mean(y, dims, correction=0, keepdim=True)
        count = y.numel() // y.shape[axis]
        m, v = mean.flatten().double(), var.flatten().double()
        if self.total is None:
            self.total, self.squares = torch.zeros_like(m), torch.zeros_like(m)
        self.n += count
        self.total += count * m
        self.squares += count * (v + m * m)
        return var, mean

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.n
        return mean, (self.squares / self.n - mean * mean).clamp_min(0).sqrt()


@dataclass
class ReferenceStatistics:
    """The per-unit mean and standard deviation of every correctable layer's output in each
    reference model, measured once (so a line can be repaired at many points), with the notes
    on the layers that are left as they are."""

    means: list[dict[str, torch.Tensor]]
    stds: list[dict[str, torch.Tensor]]
    sites: list[str]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def measure(
        cls,
        references: Sequence[nn.Module],
        data: Any,
        *,
        num_samples: int | None = None,
        batch_size: int = 256,
        labels: bool = True,
    ) -> ReferenceStatistics:
        """One eval-mode pass of each reference over ``data``. References with BatchNorm are
        measured with their BatchNorm statistics recomputed on ``data`` (on copies; one more
        pass each), as the repaired model's are: the running statistics a model ends training
        with describe the weights of its last steps, and measured against them the targets
        carry that lag into the repaired model."""
        references = [unwrap(r) for r in references]
        if not references:
            raise InvalidArgumentError("repair needs at least one reference model")
        for i, r in enumerate(references[1:], 1):
            check_same_architecture(
                references[0].state_dict(), r.state_dict(), what=f"references[{i}]", of="references[0]"
            )
        chosen, notes = correction_sites(references[0], data, batch_size=batch_size, labels=labels)
        means, stds = [], []
        if has_batchnorm(references[0]):
            notes.append(
                "the references' BatchNorm statistics were recomputed on the data (on copies) before "
                "measuring: running statistics from training describe older weights"
            )
        for r in references:
            if has_batchnorm(r):
                r = update_bn(copy.deepcopy(r), data, num_samples, batch_size=batch_size)
            moments = _measure(r, chosen, data, num_samples, batch_size, labels, correct=None)
            pairs = {k: m.mean_std() for k, m in moments.items()}
            means.append({k: v[0] for k, v in pairs.items()})
            stds.append({k: v[1] for k, v in pairs.items()})
        return cls(means, stds, chosen, notes)

    def targets(self, weights: Sequence[float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each site's target (mean, std): the references' weighted by ``weights``."""
        if len(weights) != len(self.means):
            raise InvalidArgumentError(f"{len(weights)} weights for {len(self.means)} references")
        return {
            s: (
                sum(w * m[s] for w, m in zip(weights, self.means)),
                sum(w * d[s] for w, d in zip(weights, self.stds)),
            )
            for s in self.sites
        }


def _first_batch(data: Any, batch_size: int, labels: bool):
    batch = next(iter(batches(data, batch_size=batch_size, labels=labels, reiterable=True)), None)
    if batch is None:
        raise DataError("repair got no data: the data iterable yielded no batch")
    return batch


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def correction_sites(
    model: nn.Module, data: Any, *, batch_size: int = 256, labels: bool = True
) -> tuple[list[str], list[str]]:
    """The names of the modules whose outputs REPAIR corrects in ``model``, and a note for each
    kind of module left as it is (and why), from one forward pass on the first batch of
    ``data``: a Linear, convolution or norm whose output holds hidden units is corrected,
    unless its only use is a BatchNorm (which is corrected instead), its output is the model's
    output, it runs more than once per forward, its weight is tied to another module's, or it
    has no bias (or affine parameters) to take the shift."""
    model = unwrap(model)
    batch = _first_batch(data, batch_size, labels).to(device_of(model), float_dtype_of(model))
    names = {id(m): n for n, m in model.named_modules()}
    owners: dict[int, set[str]] = {}
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    calls: dict[str, int] = {}
    # id(output) -> (module, weak reference): an id outlives its tensor and is reused, so a
    # later tensor of the same id is only that module's output while the reference is alive
    produced: dict[int, tuple[str, weakref.ref]] = {}
    into_bn: dict[str, int] = {}
    uses: dict[str, int] = {}
    handles = []

    def after(mod, args, out):
        name = names[id(mod)]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (name, weakref.ref(out))

    def producer(t: torch.Tensor) -> str | None:
        name, ref = produced.get(id(t), (None, None))
        return name if ref is not None and ref() is t else None

    def before(mod, args):
        for a in args:
            src = producer(a) if isinstance(a, torch.Tensor) else None
            if src is not None:
                uses[src] = uses.get(src, 0) + 1
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    into_bn[src] = into_bn.get(src, 0) + 1

    for mod in model.modules():
        if mod is not model:
            handles.append(mod.register_forward_pre_hook(before))
            handles.append(mod.register_forward_hook(after))
    try:
        with modes_restored(model), torch.no_grad():
            model.eval()
            out = call_model(model, batch.x)
    finally:
        for h in handles:
            h.remove()
    output_names = {n for t in _leaves(out) if (n := producer(t)) is not None}
    chosen, skipped = [], {}
    for name, mod in model.named_modules():
        if name not in calls or _unit_axis(mod) is None:
            continue
        why = None
        if name in output_names:
            why = "its output is the model's output"
        elif into_bn.get(name) and into_bn[name] == uses.get(name, 0):
            continue  # the BatchNorm after it is corrected
        elif calls[name] > 1:
            why = "it runs more than once per forward"
        elif getattr(mod, "weight", None) is None or getattr(mod, "bias", None) is None:
            why = "it has no weight and bias to fold the correction into"
        elif any(len(owners[id(p)]) > 1 for p in (mod.weight, mod.bias)):
            why = "its weight is tied to another module's"
        if why is None:
            chosen.append(name)
        else:
            skipped.setdefault(why, []).append(name)
    notes = [
        f"repair left {len(v)} layer(s) as they are because {why}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
        for why, v in skipped.items()
    ]
    if not chosen:
        notes.append("repair found no layer to correct: no Linear, convolution or norm produces hidden units")
    return chosen, notes


def _measure(
    model: nn.Module,
    sites: Sequence[str],
    data: Any,
    num_samples: int | None,
    batch_size: int,
    labels: bool,
    correct: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None,
) -> dict[str, _Moments]:
    """Each site's output moments over ``data`` (eval mode); with ``correct``, each site's
    output is also reset to its target (mean, std) with the batch's own statistics before the
    layers after it see it."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    moments = {s: _Moments() for s in sites}
    handles = []

    def hook_for(name: str):
        axis = _unit_axis(modules[name])[0]

        def hook(mod, args, y):
            var, mu = moments[name].add(y, axis)
            if correct is None:
                return None
            mean_t, std_t = correct[name]
            scale = _scale(std_t.to(var).view(var.shape), var)
            return torch.addcmul(mean_t.to(y).view(mu.shape) - mu * scale, y, scale)

        return hook

    for s in sites:
        handles.append(modules[s].register_forward_hook(hook_for(s)))
    device, dtype = device_of(model), float_dtype_of(model)
    try:
        with modes_restored(model), torch.no_grad():
            model.eval()
            seen = False
            for batch in batches(
                data, batch_size=batch_size, labels=labels, num_samples=num_samples, reiterable=True
            ):
                call_model(model, batch.to(device, dtype).x)
                seen = True
            if not seen:
                raise DataError("repair got no data: the data iterable yielded no batch")
    finally:
        for h in handles:
            h.remove()
    return moments


@torch.no_grad()
def _fold(module: nn.Module, weight_axis: int, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``y -> y · scale + shift`` per unit, written into the module's weight and bias."""
    w, b = module.weight, module.bias
    shape = [1] * w.ndim
    shape[weight_axis] = -1
    w.mul_(scale.to(w).view(shape))
    b.copy_(b * scale.to(b) + shift.to(b))


def repair(
    model: nn.Module,
    references: Sequence[nn.Module] | ReferenceStatistics,
    data: Any,
    *,
    weights: Sequence[float] | None = None,
    num_samples: int | None = None,
    batch_size: int = 256,
    labels: bool = True,
) -> nn.Module:
    """REPAIR ``model`` (a merge or interpolation of ``references``, all in one basis, as
    :func:`modeconn.merge` or :func:`modeconn.align` leave them), in place, and return it:
    each hidden unit's mean and standard deviation on ``data`` become the ``weights``-weighted
    average (default uniform) of the references' at the same unit, the correction folded into
    the layer producing it, so the model keeps its class and state-dict keys. The units a
    layer produces are corrected whether or not their group was permutable (averaging shrinks
    fixed units' variance too); the layers that cannot take the correction, and why, are in
    :attr:`ReferenceStatistics.notes` (:func:`correction_sites`).

    Costs one eval pass of each reference (two with BatchNorm) and one of the model over
    ``data`` (pass ``references`` as :class:`ReferenceStatistics` to measure them once for many
    models). The references and the model are measured in separate passes, so ``data`` should
    give the same inputs every time it is read: no random augmentation.

    BatchNorm models: recompute the model's BatchNorm statistics first
    (:func:`modeconn.update_bn`; :func:`modeconn.merge` does). The references are measured after
    the same recomputation (on copies). A BatchNorm's output then has, per channel, mean β and
    standard deviation |γ| on the data, and the merge's β and γ are the weighted averages of the
    references': REPAIR at a BatchNorm equals that plain recomputation ("RESET" in the paper)
    except where γ changes sign between references. Measured against the references' running
    statistics instead, which lag the weights they ended training with, REPAIR would copy that
    lag (merging three digits TinyTens, it cost 19 points of accuracy).
    """
    model = unwrap(model)
    if data is None:
        raise InvalidArgumentError(
            "repair needs data: the references' and the model's activation statistics are measured "
            "on it (pass a DataLoader, batches or a tensor of training inputs)"
        )
    stats = (
        references
        if isinstance(references, ReferenceStatistics)
        else ReferenceStatistics.measure(
            references, data, num_samples=num_samples, batch_size=batch_size, labels=labels
        )
    )
    n = len(stats.means)
    weights = [1.0 / n] * n if weights is None else [float(w) for w in weights]
    targets = stats.targets(weights)
    modules = dict(model.named_modules())
    missing = [s for s in stats.sites if s not in modules]
    if missing:
        raise InvalidArgumentError(
            f"the model has no module {missing[0]!r} that the references have: it is not of their architecture"
        )
    measured = _measure(model, stats.sites, data, num_samples, batch_size, labels, correct=targets)
    for name in stats.sites:
        mean, std = measured[name].mean_std()
        mean_t, std_t = targets[name]
        scale = _scale(std_t, std * std)
        shift = mean_t - mean * scale
        if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
            raise DataError(f"repair measured NaN or Inf at `{name}`: the model or the data is not finite")
        _fold(modules[name], _unit_axis(modules[name])[1], scale, shift)
    return model
