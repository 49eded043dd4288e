"""``align``: find the permutation of model B that best matches model A (paper §3.1, Alg. 1)."""

from __future__ import annotations

import copy
import itertools
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.costs import ActivationCost, WeightCost
from modeconn.alignment.stats import Accumulator, PairStats, site_view
from modeconn.alignment.weight_matching import match_weights, weight_similarity
from modeconn.data.batches import Batch, batches
from modeconn.errors import AlignmentError, PluginError
from modeconn.evaluation import architecture_difference
from modeconn.modules import float_dtype_of, modes_restored, unwrap
from modeconn.plugin_manager import PluginEntry, get_plugin
from modeconn.symmetry.discovery import discover, model_inputs, trace_model
from modeconn.symmetry.permute import permute
from modeconn.symmetry.spec import Group, PermutationSpec, Site

__all__ = ["align", "AlignResult", "Similarity"]

Perms = dict[str, torch.Tensor]


@dataclass
class Similarity:
    """Per group, the mean correlation between matched units before and after alignment (the
    paper's "correlation signature", Fig. 1a), measured at the sites of ``kind``."""

    rows: list[tuple[str, int, float, float]]  # (group, units, before, after)
    kind: str

    @property
    def before(self) -> dict[str, float]:
        return {g: b for g, _, b, _ in self.rows}

    @property
    def after(self) -> dict[str, float]:
        return {g: a for g, _, _, a in self.rows}

    def mean(self) -> tuple[float, float]:
        """Unit-weighted mean correlation over all groups, before and after."""
        total = sum(n for _, n, _, _ in self.rows) or 1
        return (
            sum(n * b for _, n, b, _ in self.rows) / total,
            sum(n * a for _, n, _, a in self.rows) / total,
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "groups": [dict(zip(("group", "units", "before", "after"), r)) for r in self.rows],
        }

    def plot(self, path: str | os.PathLike | None = None):
        """The correlation signature as in the paper's Fig. 1a: mean matched correlation per
        group, in network order, before and after alignment; saved to ``path`` when given.
        Returns the matplotlib figure."""
        from modeconn.plotting import finish, pyplot

        fig, ax = pyplot().subplots(figsize=(max(5.0, 0.35 * len(self.rows) + 2), 3.8))
        idx = list(range(len(self.rows)))
        ax.plot(idx, [r[2] for r in self.rows], marker="o", label="before alignment")
        ax.plot(idx, [r[3] for r in self.rows], marker="o", label="after alignment")
        ax.set_xticks(idx, [r[0] for r in self.rows], rotation=60, ha="right", fontsize=7)
        ax.set(
            ylabel="mean correlation of matched units",
            title=f"correlation signature ({self.kind}-activations)",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        return finish(fig, path)

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [5])
        lines = [
            f"mean correlation of matched units ({self.kind}-activations)",
            f"  {'group':<{width}}  {'units':>5}  {'before':>7}  {'after':>7}",
        ]
        lines += [f"  {g:<{width}}  {n:>5}  {b:>7.3f}  {a:>7.3f}" for g, n, b, a in self.rows]
        mb, ma = self.mean()
        lines.append(f"  {'(all)':<{width}}  {'':>5}  {mb:>7.3f}  {ma:>7.3f}")
        return "\n".join(lines)


@dataclass
class AlignResult:
    """What :func:`align` found.

    ``model`` is a permuted copy of model B (the same function as B, its units matched to A's);
    ``perms[g][i]`` is the unit of B now at position ``i`` of group ``g``.
    """

    model: nn.Module
    perms: Perms
    spec: PermutationSpec
    cost: str
    similarity: Similarity | None
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        moved = sum(int((p != torch.arange(len(p))).any()) for p in self.perms.values())
        return f"<AlignResult cost={self.cost!r}: {moved}/{len(self.perms)} groups permuted>"


# -- checks ---------------------------------------------------------------------------------


def _check_same_architecture(a: nn.Module, b: nn.Module) -> None:
    if (where := architecture_difference(a.state_dict(), b.state_dict())) is not None:
        raise AlignmentError(
            f"model_b differs from model_a at {where}; align needs two models of one architecture."
        )


def _check_finite(model: nn.Module, label: str) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AlignmentError(f"{label} has NaN or Inf in `{name}`; align needs finite weights.")


# -- statistics -----------------------------------------------------------------------------


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _has_inplace_ops(gm: fx.GraphModule) -> bool:
    for n in gm.graph.nodes:
        if n.op == "call_module" and getattr(gm.get_submodule(n.target), "inplace", False):
            return True
        if n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("__"):
            return True
        if n.op == "call_function" and (
            n.target in _INPLACE_FUNCTIONS
            or n.kwargs.get("inplace")
            or getattr(n.target, "__name__", "").endswith("_")
        ):
            return True
    return False


def _site_extractor(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A graph that returns each named node's output. If the graph has in-place ops (a
    ReLU(inplace=True) after a BatchNorm), the outputs are copies taken right away, so that
    later in-place ops cannot change what was observed."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, env)
    by_name = {n.name: n for n in gm.graph.nodes}
    copy_sites = _has_inplace_ops(gm)
    outs = []
    for name in names:
        node = env[by_name[name]]
        if copy_sites:
            with graph.inserting_after(node):
                node = graph.call_method("clone", (node,))
        outs.append(node)
    graph.output(tuple(outs))
    extractor = fx.GraphModule(gm, graph)
    extractor.graph.eliminate_dead_code()  # stop after the last site
    extractor.recompile()
    return extractor


def _choose_sites(group: Group, kind: str) -> list[Site]:
    preferred = [s for s in group.sites if s.kind == kind]
    return preferred or list(group.sites)


def _collect(
    model_a: nn.Module,
    model_b: nn.Module,
    groups: list[Group],
    kind: str,
    data: Iterator[Batch],
    device: torch.device,
    first: Batch,
) -> dict[str, list[PairStats]]:
    """One eval forward pass of each model per batch; statistics for every site of every group."""
    plan = {g.name: _choose_sites(g, kind) for g in groups}
    names = sorted({s.node for sites in plan.values() for s in sites})
    index = {n: i for i, n in enumerate(names)}
    probe = model_inputs(model_a, first.inputs)
    extract_a = _site_extractor(trace_model(model_a, probe), names)
    extract_b = _site_extractor(trace_model(model_b, probe), names)
    acc = {g.name: [Accumulator(g.size, s.kind) for s in plan[g.name]] for g in groups}
    dtype = float_dtype_of(model_a)
    with torch.no_grad():
        for step, batch in enumerate(data):
            inputs = model_inputs(model_a, batch.to(device, dtype).inputs)
            try:
                va = extract_a(*inputs.values)
            except Exception as e:
                raise AlignmentError(
                    f"model_a rejected the data (a batch of {inputs.describe()}): {type(e).__name__}: {e}"
                ) from e
            try:
                vb = extract_b(*inputs.values)
            except Exception as e:
                raise AlignmentError(
                    f"model_b rejected the data (a batch of {inputs.describe()}): {type(e).__name__}: {e}"
                ) from e
            if step == 0:
                _check_activations(va, vb, names)
            # The site outputs are ours (fresh activations, or copies when the graph has in-place
            # ops) and no two (group, site) slices overlap, so the statistics may shift them in place.
            for g in groups:
                for site, a in zip(plan[g.name], acc[g.name]):
                    i = index[site.node]
                    a.update(site_view(va[i], site, g.size), site_view(vb[i], site, g.size), inplace=True)
    out = {}
    for g in groups:
        if not acc[g.name] or acc[g.name][0].n == 0:
            raise AlignmentError("no data: the data iterable yielded no batch")
        out[g.name] = [a.result() for a in acc[g.name]]
        for site, st in zip(plan[g.name], out[g.name]):
            if not (
                torch.isfinite(st.cov).all()
                and torch.isfinite(st.var_a).all()
                and torch.isfinite(st.var_b).all()
            ):
                raise AlignmentError(f"activations at node `{site.node}` (group {g.name}) contain NaN or Inf")
    return out


def _check_activations(va, vb, names) -> None:
    for label, values in (("model_a", va), ("model_b", vb)):
        for name, v in zip(names, values):
            # a sum is one cheap pass and is non-finite whenever an element is; only then (or
            # on overflow) run the element-wise check, which costs ~6 passes over the data
            if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
                raise AlignmentError(f"{label}'s activations at node `{name}` contain NaN or Inf")


def _similarity(groups: list[Group], stats: dict[str, list[PairStats]], perms: Perms) -> Similarity:
    rows = []
    kinds = set()
    for g in groups:
        site_stats = stats.get(g.name)
        if not site_stats:
            continue
        corr = torch.stack([s.correlation() for s in site_stats]).mean(0)
        kinds.update(s.kind for s in site_stats)
        idx = torch.arange(g.size)
        rows.append((g.name, g.size, float(corr[idx, idx].mean()), float(corr[idx, perms[g.name]].mean())))
    return Similarity(rows, "/".join(sorted(kinds)) or "none")


def _has_constant_units(site_stats: list[PairStats]) -> bool:
    dead_a = torch.stack([s.var_a <= 0 for s in site_stats]).all(0)
    dead_b = torch.stack([s.var_b <= 0 for s in site_stats]).all(0)
    return bool(dead_a.any() or dead_b.any())


TIE_SCALE = 1e-5
"""Weight of the tie-breaking term: above float32 noise in the statistics, below any real difference."""


def _break_ties(spec, groups, matrices, maximize, state_a, state_b, perms) -> Perms:
    """Units with (nearly) equal activation costs — dead ReLUs, units that fire on the same few
    inputs — are told apart by their weights: a weight-similarity term, normalized to [-1, 1] and
    scaled by TIE_SCALE, is added to each group's matrix. Two passes, since a group's weights
    are compared through its neighbours' permutations."""
    sign = 1.0 if maximize else -1.0
    for _ in range(2):
        for g in groups:
            w = weight_similarity(spec, g, state_a, state_b, perms)
            w = w / w.abs().max().clamp_min(1e-300)
            perms[g.name] = solve_assignment(matrices[g.name] + sign * TIE_SCALE * w, maximize=maximize)
    return perms


# -- the driver ------------------------------------------------------------------------------


def _peek(it: Iterator[Batch]) -> tuple[Batch | None, Iterator[Batch]]:
    first = next(it, None)
    return first, (itertools.chain([first], it) if first is not None else iter(()))


def _cost_entry(name: str) -> PluginEntry:
    entry = get_plugin("cost", name)
    if not isinstance(entry.obj, (ActivationCost, WeightCost)):
        raise PluginError(
            f"cost plugin {name!r} (from plugin {entry.plugin!r}) registered a {type(entry.obj).__name__}; "
            f"costs must be ActivationCost or WeightCost instances"
        )
    return entry


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any = None,
    *,
    cost: str = "correlation",
    spec: PermutationSpec | None = None,
    num_samples: int | None = None,
    device: str | torch.device | None = None,
    example_inputs: Any = None,
    batch_size: int = 256,
    labels: bool = True,
) -> AlignResult:
    """Permute model B's units to match model A's (neuron alignment).

    ``data`` is a DataLoader or iterable of batches (tensors, dicts of inputs by name, or
    ``(inputs..., labels)`` tuples — ``labels=False`` when tuples hold inputs only), a Dataset,
    or a tensor of inputs; ``num_samples`` caps how many samples are used. Wrapped models
    (DataParallel, DDP, ``torch.compile``) are looked through. ``cost`` names a cost plugin:
    ``"correlation"`` (post-activations, the paper's default), ``"l2_preact"`` (pre-activations,
    the paper's Wasserstein-2 variant) or ``"weight_matching"`` (data-free). Statistics are
    taken in eval mode with one forward pass of each model; both models are left unchanged.
    ``spec`` defaults to ``discover(model_a, ...)`` on the first batch (or ``example_inputs``).
    """
    entry = _cost_entry(cost)
    cost_obj = entry.obj
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    _check_same_architecture(model_a, model_b)
    _check_finite(model_a, "model_a")
    _check_finite(model_b, "model_b")
    if device is None:
        device = next((p.device for p in model_a.parameters()), torch.device("cpu"))
    device = torch.device(device)
    stream: Iterator[Batch] = iter(())
    first = None
    if data is not None:
        first, stream = _peek(
            iter(batches(data, batch_size=batch_size, labels=labels, num_samples=num_samples))
        )
        if first is None:
            raise AlignmentError("no data: the data iterable yielded no batch")
    elif cost_obj.requires_data:
        raise AlignmentError(
            f"cost {cost!r} needs data: pass a DataLoader, batches or a tensor of inputs "
            f"(or use cost='weight_matching', which needs none)"
        )

    a, b = model_a, model_b
    if any(p.device != device for p in itertools.chain(a.parameters(), b.parameters())):
        a, b = copy.deepcopy(a).to(device), copy.deepcopy(b).to(device)
    with modes_restored(a), modes_restored(b):
        a.eval()
        b.eval()
        if spec is None:
            probe = (
                example_inputs if example_inputs is not None else (first.head(2).inputs if first else None)
            )
            spec = discover(a, probe)  # shapes only
        groups = spec.permutable
        notes: list[str] = []
        perms: Perms = spec.identity()
        stats: dict[str, list[PairStats]] = {}
        if isinstance(cost_obj, ActivationCost):
            observed = [g for g in groups if g.sites]
            stats = _collect(a, b, observed, cost_obj.site_kind, stream, device, first)
            matrices = {}
            for g in observed:
                mats = [entry.invoke(cost_obj.matrix, s) for s in stats[g.name]]
                matrices[g.name] = torch.stack(mats).mean(0).double()
                perms[g.name] = solve_assignment(matrices[g.name], maximize=cost_obj.maximize)
            state_a = {k: v.detach() for k, v in a.state_dict().items()}
            state_b = {k: v.detach() for k, v in b.state_dict().items()}
            perms = _break_ties(spec, observed, matrices, cost_obj.maximize, state_a, state_b, perms)
            silent = [g.name for g in observed if _has_constant_units(stats[g.name])]
            if silent:
                notes.append(
                    f"{len(silent)} group(s) have units that are constant on the data (dead ReLUs); weight "
                    f"similarity decided their ties: {', '.join(silent[:5])}{' ...' if len(silent) > 5 else ''}"
                )
            hidden = [g for g in groups if not g.sites]
            if hidden:  # e.g. head dims inside nn.MultiheadAttention: no activation to observe
                perms = match_weights(spec, state_a, state_b, groups=hidden, init=perms)
                notes.append(
                    f"{len(hidden)} group(s) without an observable activation were aligned by weight matching "
                    f"with the others held fixed: {', '.join(g.name for g in hidden[:5])}{' ...' if len(hidden) > 5 else ''}"
                )
        else:
            state_a = {k: v.detach() for k, v in a.state_dict().items()}
            state_b = {k: v.detach() for k, v in b.state_dict().items()}
            found = entry.invoke(cost_obj.solve, spec, state_a, state_b)
            perms.update({k: torch.as_tensor(v, dtype=torch.long).cpu() for k, v in found.items()})
            if data is not None:
                stats = _collect(a, b, [g for g in groups if g.sites], "post", stream, device, first)
        spec.check(perms)
        similarity = _similarity(groups, stats, perms) if stats else None
    aligned = permute(model_b, spec, perms)
    return AlignResult(model=aligned, perms=perms, spec=spec, cost=cost, similarity=similarity, notes=notes)
