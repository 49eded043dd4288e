"""Streaming sufficient statistics of two models' units, observed at the same sites.

For one site of one group, each batch gives activation matrices ``Xa``, ``Xb`` of shape
(samples, units) (for a convolution every spatial position is a sample). We accumulate
``n``, per-unit sums and sums of squares, and the cross products ``Xaᵀ Xb``, in float64 and
shifted by the first batch's means (which keeps the variances accurate when means are large).
Memory is O(units²) whatever the number of samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from tqdm.auto import tqdm

from modeconn import distributed
from modeconn.alignment.derived import derive, derived_sites
from modeconn.capture import ModelInputs, model_inputs, observe_pairs
from modeconn.data.batches import Batch, batches
from modeconn.errors import AlignmentError
from modeconn.memory import release_freed_memory
from modeconn.modules import device_of, float_dtype_of, modes_restored, unwrap
from modeconn.symmetry.discovery import capture_graph
from modeconn.symmetry.spec import Group, PermutationSpec, Site, unit_view

__all__ = [
    "PairStats",
    "SITES",
    "site_view",
    "site_matrix",
    "collect_statistics",
    "check_statistics_options",
    "first_batch",
    "graphs_for",
    "choose_sites",
    "paired_sites",
    "spatial_subsample",
]

ADVERSARIAL = ("own", "shared")
"""Whose adversarial examples robust alignment observes: each model's own, or model A's for both."""


def _check_sites(node: str, value: torch.Tensor, observed: Sequence, inputs: Any) -> None:
    """Every site's units lie inside its output, or the spec came from other inputs (a dict
    of other keys captures another graph, whose nodes the sites do not name)."""
    shape = tuple(value.shape)
    for _, g, site in observed:
        if site.axis >= len(shape) or shape[site.axis] < site.start + g.size * site.inner:
            raise AlignmentError(
                f"group {g.name!r} is observed at node {node!r}, axis {site.axis}, but that node's "
                f"output on the data ({inputs.describe()}) has shape {shape}: the spec was discovered "
                f"on other inputs. Give align batches with the inputs discover was given (the same "
                f"keys), or discover the spec again on a batch of the data."
            )


def site_view(value: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """One group's units at one site output as (outer, units, samples) — a view in the usual
    contiguous case; every position before and after the unit axis (batch, space, flattened
    ``inner`` positions) is a sample."""
    return unit_view(value, site.axis, site.start, site.inner, size)


def site_matrix(value: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """The (samples, units) matrix of one group's units at one site output."""
    return site_view(value, site, size).movedim(1, -1).reshape(-1, size)


@dataclass
class PairStats:
    """Sufficient statistics of model A's and model B's units at one site.

    ``mean_a``, ``mean_b``, ``var_a``, ``var_b`` are per unit; ``cov`` is the cross-covariance
    (A's units by B's units); ``cross`` the uncentred second moment E[a bᵀ]. ``kind`` says
    whether the site is before (``"pre"``) or after (``"post"``) a nonlinearity.
    ``floor_a``, ``floor_b`` are per-unit variances below which a unit's variation is within the
    rounding of the activations it was measured on (:data:`ROUNDING_STEPS` float steps of the
    site's magnitude): such a unit is constant (:meth:`constant`); ``None``: only a zero
    variance is.
    """

    n: int
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    var_a: torch.Tensor
    var_b: torch.Tensor
    cov: torch.Tensor
    kind: str
    floor_a: torch.Tensor | None = None
    floor_b: torch.Tensor | None = None

    @property
    def cross(self) -> torch.Tensor:
        return self.cov + torch.outer(self.mean_a, self.mean_b)

    def constant(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which units of A and of B are constant on the data: no variance beyond rounding."""
        return _constant(self.var_a, self.floor_a), _constant(self.var_b, self.floor_b)

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every unit pair (paper eq. 3); 0 where a unit is constant
        (:meth:`constant`: the correlation of rounding errors says nothing about the units)."""
        std_a, std_b = self._stds()
        corr = torch.outer(std_a, std_b).clamp_min_(1e-300)  # one units x units tensor, in place
        torch.div(self.cov, corr, out=corr)
        const_a, const_b = self.constant()
        corr[const_a] = 0.0
        corr[:, const_b] = 0.0
        return corr.clamp_(-1.0, 1.0)

    def correlation_at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """:meth:`correlation` at the pairs ``(rows[i], cols[i])`` only."""
        std_a, std_b = self._stds()
        corr = self.cov[rows, cols] / (std_a[rows] * std_b[cols]).clamp_min(1e-300)
        const_a, const_b = self.constant()
        return corr.masked_fill_(const_a[rows] | const_b[cols], 0.0).clamp_(-1.0, 1.0)

    def _stds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.var_a.clamp_min(0).sqrt(), self.var_b.clamp_min(0).sqrt()


def _constant(var: torch.Tensor, floor: torch.Tensor | None) -> torch.Tensor:
    return var <= 0 if floor is None else var <= floor


ROUNDING_STEPS = 64
"""A unit whose standard deviation is within this many float steps (the activations' dtype's
machine epsilon) of the root mean square of its site's units is constant: its correlations are
rounding noise. Two copies of one unit computed with their inputs summed in another order (a
permuted model) differ by up to ~30 such steps (measured on a MobileNetV3, whose randomly
initialised squeeze-excitation gates are constant to 1e-7 and correlated -0.6 with their own
copies); relative to the unit's own magnitude the difference is unbounded (1,600 steps there)."""


class Accumulator:
    """Accumulates :class:`PairStats` for one (group, site) over batches."""

    def __init__(self, size: int, kind: str, device: torch.device | str | None = None):
        """``device``: where to allocate the sums now (else at the first batch). A pass
        allocates all its sums before its first batch, so that the batches' temporaries are not
        interleaved with them on the heap."""
        self.size, self.kind = size, kind
        self.n = 0
        self.shift_a = self.shift_b = None
        self.eps = 0.0
        self.sab = None
        if device is not None:
            self._allocate(torch.device(device))

    def update(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        """Add one batch, given as (outer, units, samples) views (see :func:`site_view`); the
        views are only read.

        Each batch is reduced in its own precision (torch's cascade sums keep that accurate)
        and added to float64 totals; a float64 reduction over strided data would cost more than
        the model's convolutions.
        """
        if self.shift_a is None:
            self._start_empty(
                xa.mean((0, 2)).detach()[None, :, None], xb.mean((0, 2)).detach()[None, :, None]
            )
        self.n += xa.shape[0] * xa.shape[2]
        self.eps = max(self.eps, torch.finfo(xa.dtype).eps, torch.finfo(xb.dtype).eps)
        outer, units, samples = xa.shape
        if samples > 1 and units <= samples:
            # many positions per unit (early feature maps): one small product per outer index
            xa, xb = xa - self.shift_a, xb - self.shift_b
            self.sab += torch.bmm(xa, xb.transpose(1, 2)).sum(0)  # added into float64, no float64 copy
            # reductions over the contiguous sample axis first (~30% faster than over (0, 2) at once)
            self._add_moments(
                xa.sum(2).sum(0), xb.sum(2).sum(0), _squares(xa, 2).sum(0), _squares(xb, 2).sum(0)
            )
            return
        if samples > 1:
            # more units than positions (wide late layers): a batched product would write an
            # (outer, units, units) tensor far larger than the data, so the units go first, as
            # (units, samples) — one pass shifts and copies — and the products are one GEMM
            xa, xb = _units_first(xa, self.shift_a), _units_first(xb, self.shift_b)
            self.sab += xa @ xb.T
            self._add_moments(xa.sum(1), xb.sum(1), _squares(xa, 1), _squares(xb, 1))
            return
        xa, xb = xa[:, :, 0] - self.shift_a[0, :, 0], xb[:, :, 0] - self.shift_b[0, :, 0]  # (samples, units)
        self.sab += xa.T @ xb
        self._add_moments(xa.sum(0), xb.sum(0), _squares(xa, 0), _squares(xb, 0))

    def _add_moments(self, sa, sb, saa, sbb) -> None:
        self.sa += sa.double()
        self.sb += sb.double()
        self.saa += saa.double()
        self.sbb += sbb.double()

    def _start_empty(self, shift_a: torch.Tensor, shift_b: torch.Tensor) -> None:
        self.shift_a, self.shift_b = shift_a, shift_b
        if self.sab is None or self.sab.device != shift_a.device:
            self._allocate(shift_a.device)

    def _allocate(self, device: torch.device) -> None:
        self.sab = torch.zeros(self.size, self.size, dtype=torch.float64, device=device)
        self.sa = torch.zeros(self.size, dtype=torch.float64, device=device)
        self.sb, self.saa, self.sbb = self.sa.clone(), self.sa.clone(), self.sa.clone()

    def result(self) -> PairStats:
        """The statistics of the batches added; the accumulator is spent (its cross-product
        sums become the covariance in place, so that no second units x units copy is made)."""
        if self.sab is None:
            raise RuntimeError("Accumulator.result() was already taken: it is computed in place")
        n = self.n
        ma, mb = self.sa / n, self.sb / n
        mean_a, mean_b = (
            (ma + self.shift_a.flatten().double()).cpu(),
            (mb + self.shift_b.flatten().double()).cpu(),
        )
        var_a, var_b = (self.saa / n - ma * ma).cpu(), (self.sbb / n - mb * mb).cpu()
        step = (ROUNDING_STEPS * self.eps) ** 2
        floor_a = step * float((mean_a.square() + var_a.clamp_min(0)).mean())
        floor_b = step * float((mean_b.square() + var_b.clamp_min(0)).mean())
        return PairStats(
            n=n,
            mean_a=mean_a,
            mean_b=mean_b,
            var_a=var_a,
            var_b=var_b,
            cov=self._covariance(ma, mb),
            kind=self.kind,
            floor_a=torch.full_like(var_a, floor_a),
            floor_b=torch.full_like(var_b, floor_b),
        )

    def _covariance(self, ma: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        sab, self.sab = self.sab, None
        return sab.div_(self.n).sub_(torch.outer(ma, mb)).cpu()


def paired_sites(spec: PermutationSpec) -> dict[str, tuple[Site, ...]]:
    """Each permutable group's sites at which models A and B see the same samples: those where
    no other axis of the output carries a permutable group. (After a Linear that mixes tokens,
    ``flatten(2)`` then ``Linear(H·W, k)``, the samples of the token units run over channels,
    which B has in another order: such a site cannot tell the units apart.)"""
    carried: dict[str, set[int]] = {}
    for g in spec.permutable:
        for s in g.sites:
            carried.setdefault(s.node, set()).add(s.axis)
    return {g.name: tuple(s for s in g.sites if carried[s.node] == {s.axis}) for g in spec.permutable}


def _squares(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sums of squares along ``dim``. Along a contiguous axis vector_norm reads ``x`` once
    instead of writing its square back; across rows it is ~2x slower than the square and sum."""
    if x.stride(dim) == 1:
        return torch.linalg.vector_norm(x, dim=dim).square_()
    return (x * x).sum(dim)


def _units_first(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x - shift`` for an (outer, units, samples) view, written as a contiguous (units,
    outer · samples) matrix."""
    out = torch.empty((x.shape[1], x.shape[0], x.shape[2]), dtype=x.dtype, device=x.device)
    torch.sub(x.transpose(0, 1), shift.transpose(0, 1), out=out)
    return out.view(x.shape[1], -1)


SITES = ("all", "last")
"""Which of a group's sites of the cost's kind alignment observes: every one, or the last in
graph order (one activation per group, as the paper matches one per layer); or an int k, at
most k of them, spread evenly from the first to the last."""


def choose_sites(group: Group, kind: str, sites: str | int = "all") -> list[Site]:
    """The sites of ``group`` of ``kind`` ("pre" or "post"), or all its sites when it has none
    of that kind, narrowed by ``sites`` (see :data:`SITES`)."""
    chosen = [s for s in group.sites if s.kind == kind] or list(group.sites)
    if sites == "all" or not chosen:
        return chosen
    n = len(chosen)
    k = 1 if sites == "last" else min(sites, n)
    if k == 1:
        return chosen[-1:]
    return [chosen[i] for i in sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})]


def check_site_options(sites: Any, spatial_stride: Any) -> None:
    """Raise :class:`AlignmentError` unless ``sites`` and ``spatial_stride`` are valid."""
    if not (sites in SITES or (isinstance(sites, int) and not isinstance(sites, bool) and sites >= 1)):
        raise AlignmentError(f"sites must be one of {', '.join(SITES)} or a number >= 1, got {sites!r}")
    if not (isinstance(spatial_stride, int) and not isinstance(spatial_stride, bool) and spatial_stride >= 1):
        raise AlignmentError(f"spatial_stride must be an integer >= 1, got {spatial_stride!r}")


def spatial_subsample(value: torch.Tensor, axis: int, stride: int) -> torch.Tensor:
    """Every ``stride``-th position along the spatial axes of a site output: every axis but the
    batch (0) and the unit axis, when the output has at least 4 (a feature map); token and
    feature outputs are left whole. A view."""
    if stride == 1 or value.ndim < 4:
        return value
    axis %= value.ndim
    return value[
        tuple(slice(None) if i in (0, axis) else slice(None, None, stride) for i in range(value.ndim))
    ]


# errors of a model that does not take the data; others (out of memory, interrupts) pass as they are
_REJECTIONS = (RuntimeError, TypeError, ValueError, IndexError, KeyError, AssertionError)


def _rejected(e: Exception) -> bool:
    return isinstance(e, _REJECTIONS) and not isinstance(e, torch.OutOfMemoryError)


def check_statistics_options(adversarial: Any, sites: Any, spatial_stride: Any) -> None:
    """Raise :class:`AlignmentError` unless the options of :func:`collect_statistics` are valid."""
    if adversarial not in ADVERSARIAL:
        raise AlignmentError(f"adversarial must be one of {', '.join(ADVERSARIAL)}, got {adversarial!r}")
    check_site_options(sites, spatial_stride)


def first_batch(stream: Iterator[Batch]) -> tuple[Batch, Iterator[Batch]]:
    """The first batch of ``stream`` and the whole stream again; no batch is an error."""
    first = next(stream, None)
    if first is None:
        raise _no_data()
    return first, itertools.chain([first], stream)


def _no_data() -> AlignmentError:
    return AlignmentError(f"no data{distributed.current().where()}: the data iterable yielded no batch")


def graphs_for(
    spec: PermutationSpec, model_a: nn.Module, model_b: nn.Module, inputs: ModelInputs
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The eval-mode graphs of both models whose nodes ``spec``'s sites name, for ``inputs``:
    the spec's own capture where it fits model A (:attr:`PermutationSpec.graph`), else a new
    one, captured as the spec was; model B runs the same graph with its own tensors where that
    fits it (the same architecture), else is captured on its own. So each model is captured at
    most once, and a spec from :func:`~modeconn.discover` on model A needs no capture at all."""
    captured = spec.graph
    if captured is None or captured.fits(model_a, inputs) is not None:
        captured = capture_graph(model_a, inputs, how=spec.capture)
    graph_b = (
        captured.graph_for(model_b)
        if captured.fits(model_b, inputs) is None
        else capture_graph(model_b, inputs, how=spec.capture).graph
    )
    return captured.graph_for(model_a), graph_b


def collect_statistics(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    spec: PermutationSpec,
    *,
    kind: str = "post",
    groups: Sequence[Group] | None = None,
    batch_size: int = 256,
    num_samples: int | None = None,
    labels: bool = True,
    adversary: Any = None,
    adversarial: str = "own",
    sites: str | int = "all",
    spatial_stride: int = 1,
    progress: bool = False,
) -> dict[str, list[PairStats]]:
    """:class:`PairStats` of both models' units at the sites of every group (default: the
    permutable groups that have sites where both models see the same samples,
    :func:`paired_sites`), one eval forward pass of each model per batch. ``data``
    is any form :func:`modeconn.data.batches` reads; ``kind`` picks the sites to observe and
    ``sites`` how many of them (:data:`SITES`); ``spatial_stride`` > 1 keeps every
    ``spatial_stride``-th row and column of feature maps (the paper's code takes every second
    above 32x32); ``progress`` shows a bar over the batches. The models are left unchanged.

    With ``adversary`` (a :class:`modeconn.attacks.PGD`; models in eval mode) the statistics
    are taken on adversarial examples of each labelled batch: each model's own
    (``adversarial="own"``, the paper's code for robust models) or those against model A, fed
    to both (``"shared"``: both models see the same inputs, as in clean alignment).

    Both models run in lockstep (:func:`~modeconn.capture.observe_pairs`) through the graphs
    of :func:`graphs_for`: each site's statistics are taken as soon as both models have
    computed it, so no observed value outlives its use. Sites that an eval-mode BatchNorm
    computes from another observed site are derived from its statistics
    (:mod:`modeconn.alignment.derived`), not observed."""
    check_statistics_options(adversarial, sites, spatial_stride)
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    first, stream = first_batch(
        iter(batches(data, batch_size=batch_size, labels=labels, num_samples=num_samples, shard=True))
    )
    paired = paired_sites(spec)
    groups = [g for g in spec.permutable if paired[g.name]] if groups is None else list(groups)
    groups = [replace(g, sites=paired.get(g.name, g.sites)) for g in groups]
    with modes_restored(model_a, model_b):
        model_a.eval()
        model_b.eval()
        probe = model_inputs(model_a, first.inputs)
        graphs = graphs_for(spec, model_a, model_b, probe)
        device, dtype = device_of(model_a), float_dtype_of(model_a)
        observation = _Observation(graphs, groups, kind, sites, probe, device)
        runner = observation.runner(spatial_stride)
        with torch.no_grad():
            bar = tqdm(stream, desc="align: statistics", unit="batch", leave=False, disable=not progress)
            for batch in bar:
                batch = batch.to(device, dtype)
                inputs = model_inputs(model_a, batch.inputs)
                per_model = [inputs.values, inputs.values]
                if adversary is not None:
                    per_model = _attacked(model_a, model_b, batch, inputs.values, adversary, adversarial)
                observation.inputs = inputs
                _run(runner, per_model, observation, spec.capture, probe)
                observation.first = False
    release_freed_memory()  # the pass's activations: what comes next is the size of the statistics
    return observation.results()


class _Observation:
    """What one statistics pass observes: for each group, the sites ``kind`` and ``sites``
    choose; an accumulator per observed site, none for a site derived from another."""

    def __init__(
        self,
        graphs: tuple[fx.GraphModule, fx.GraphModule],
        groups: list[Group],
        kind: str,
        sites: str | int,
        probe: ModelInputs,
        device: torch.device | None = None,
    ):
        self.graphs, self.groups = graphs, groups
        self.plan = {g.name: choose_sites(g, kind, sites) for g in groups}
        known = {n.name for n in graphs[0].graph.nodes} & {n.name for n in graphs[1].graph.nodes}
        missing = sorted({s.node for sites in self.plan.values() for s in sites} - known)
        if missing:
            raise AlignmentError(
                f"the spec observes node(s) {', '.join(map(repr, missing[:3]))}, which the models' graphs on "
                f"the data ({probe.describe()}) do not have: the spec was discovered on other inputs or "
                f"another model. Give align batches with the inputs discover was given, or discover the "
                f"spec again."
            )
        self.derived = derived_sites(*graphs, groups, self.plan)
        self.acc = {
            g.name: [
                None if (g.name, i) in self.derived else Accumulator(g.size, s.kind, device)
                for i, s in enumerate(self.plan[g.name])
            ]
            for g in groups
        }
        self.at_node: dict[str, list[tuple[Accumulator, Group, Site]]] = {}
        for g in groups:
            for a, site in zip(self.acc[g.name], self.plan[g.name]):
                if a is not None:
                    self.at_node.setdefault(site.node, []).append((a, g, site))
        self.first, self.model, self.inputs = True, 0, probe

    def runner(self, spatial_stride: int) -> fx.GraphModule:
        """Both graphs in lockstep, feeding every observed node's values to its accumulators."""
        names = sorted(self.at_node)

        def enter(k: int) -> None:
            self.model = k

        def observe(i: int, va: torch.Tensor, vb: torch.Tensor) -> None:
            node = names[i]
            if self.first:
                _check_activations(node, va, vb)
                _check_sites(node, va, self.at_node[node], self.inputs)
            views = [
                tuple(
                    site_view(spatial_subsample(v, site.axis, spatial_stride), site, g.size) for v in (va, vb)
                )
                for _, g, site in self.at_node[node]
            ]
            accumulators = [a for a, _, _ in self.at_node[node]]
            if self.first:
                _common_shifts(accumulators, views)
            for a, (xa, xb) in zip(accumulators, views):
                a.update(xa, xb)  # not in place: the values are still the graphs' own

        return observe_pairs(*self.graphs, names, observe, enter)

    def results(self) -> dict[str, list[PairStats]]:
        """Every group's statistics, summed over the ranks of a torchrun job, derived sites
        filled in from their parents."""
        _all_reduce([a for g in self.groups for a in self.acc[g.name] if a is not None])
        out = {}
        for g in self.groups:
            observed = [a for a in self.acc[g.name] if a is not None]
            if not observed or observed[0].n == 0:
                raise _no_data()
            out[g.name] = [a.result() if a is not None else None for a in self.acc[g.name]]
            for i, site in enumerate(self.plan[g.name]):
                if (g.name, i) in self.derived:  # its parent is observed, not derived
                    d = self.derived[g.name, i]
                    out[g.name][i] = derive(out[g.name][d.parent], d, site.kind)
            for site, st in zip(self.plan[g.name], out[g.name]):
                finite = torch.isfinite(st.cov).all() and torch.isfinite(st.var_a).all()
                if not (finite and torch.isfinite(st.var_b).all()):
                    raise AlignmentError(
                        f"activations at node `{site.node}` (group {g.name}) contain NaN or Inf"
                    )
        return out


def _run(runner: fx.GraphModule, per_model: list[tuple], observation: _Observation, how: str, probe) -> None:
    """One batch through both models; a model that rejects the data is an error naming it."""
    try:
        runner(*per_model[0], *per_model[1])
    except AlignmentError:
        raise
    except Exception as e:
        if not _rejected(e):
            raise
        hint = ""
        if how == "export" and "Guard failed" in str(e):
            hint = (
                f" (the graph torch.export captured for {probe.describe()} takes other batch sizes "
                f"and sequence lengths only: give every batch the same shapes otherwise)"
            )
        raise AlignmentError(
            f"{('model_a', 'model_b')[observation.model]} rejected the data (a batch of "
            f"{observation.inputs.describe()}): {type(e).__name__}: {e}{hint}"
        ) from e


def _common_shifts(accumulators: list[Accumulator], views: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Under torchrun, start every rank's sums from rank 0's first-batch means: each batch is
    then shifted and reduced exactly as one process would, and the sums add up exactly."""
    strategy = distributed.current()
    if strategy.world_size == 1:
        return
    means = [(xa.mean((0, 2)).detach().cpu(), xb.mean((0, 2)).detach().cpu()) for xa, xb in views]
    for a, (ma, mb), (xa, _) in zip(accumulators, strategy.broadcast(means), views):
        a._start_empty(ma.to(xa)[None, :, None], mb.to(xa)[None, :, None])


def _all_reduce(accumulators: list[Accumulator]) -> None:
    """Under torchrun, the sums of every rank in one float64 all-reduce (no rank's statistics
    are averaged; the shifts are common, see :func:`_common_shifts`)."""
    strategy = distributed.current()
    if strategy.world_size == 1 or not accumulators:
        return
    flat = torch.cat(
        [
            torch.cat([a.sa.new_tensor([float(a.n)]), a.sa, a.sb, a.saa, a.sbb, a.sab.flatten()])
            for a in accumulators
        ]
    )
    strategy.all_reduce(flat)
    at = 0
    for a in accumulators:
        k = a.size
        parts = flat[at : at + 1 + 4 * k + k * k]
        at += 1 + 4 * k + k * k
        a.n = int(parts[0])
        a.sa, a.sb, a.saa, a.sbb = (parts[1 + i * k : 1 + (i + 1) * k].clone() for i in range(4))
        a.sab = parts[1 + 4 * k :].reshape(k, k).clone()


def _attacked(model_a, model_b, batch: Batch, values: tuple, adversary: Any, adversarial: str) -> list[tuple]:
    """Each model's inputs: its own adversarial examples of the clean batch (``"own"``), or
    those against model A for both (``"shared"``)."""
    x = batch.x
    single = isinstance(batch.inputs, tuple) and len(batch.inputs) == 1 and isinstance(x, torch.Tensor)
    if batch.target is None or not single:
        raise AlignmentError(
            "robust alignment attacks one input tensor and needs labelled batches: (x, y) tuples"
        )
    # the same random start for both models: a permuted copy of A gets A's examples exactly
    seed = int(torch.randint(0, 2**62, ()))
    xa = adversary(model_a, x, batch.target, generator=torch.Generator().manual_seed(seed))
    if adversarial == "shared":
        xb = xa
    else:
        xb = adversary(model_b, x, batch.target, generator=torch.Generator().manual_seed(seed))
    return [(xa, *values[1:]), (xb, *values[1:])]


def _check_activations(node: str, va: torch.Tensor, vb: torch.Tensor) -> None:
    for label, v in (("model_a", va), ("model_b", vb)):
        # a sum is one cheap pass and is non-finite whenever an element is; only then (or
        # on overflow) run the element-wise check, which costs ~6 passes over the data
        if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            raise AlignmentError(f"{label}'s activations at node `{node}` contain NaN or Inf")
