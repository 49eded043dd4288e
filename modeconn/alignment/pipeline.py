"""``align``: find the permutation of model B that best matches model A (paper §3.1, Alg. 1),
as the composition of its parts — statistics (:func:`collect_statistics`), per-group cost
matrices (:func:`cost_matrices`) and the assignment of each group (:func:`solve_groups`) —
which other methods (PAM's ``init="alignment"``) reuse on their own."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from modeconn import distributed
from modeconn.alignment.assignment import solve_assignments
from modeconn.alignment.attention_heads import HeadView, head_view
from modeconn.alignment.costs import COSTS, ActivationCost
from modeconn.alignment.result import AlignResult, CorrelationSignature
from modeconn.alignment.stats import (
    PairStats,
    check_statistics_options,
    collect_statistics,
    first_batch,
    paired_sites,
)
from modeconn.alignment.ties import TIE_SCALE, break_ties, has_constant_units, has_tied_units, largest
from modeconn.alignment.weight_matching import match_weights
from modeconn.data.batches import batches
from modeconn.errors import AlignmentError
from modeconn.memory import release_freed_memory
from modeconn.modules import device_of, modes_restored, unwrap
from modeconn.plugin_manager import PluginEntry
from modeconn.state import check_same_architecture
from modeconn.symmetry.discovery import discover
from modeconn.symmetry.permutation import axis_indices, permute, permute_tensor
from modeconn.symmetry.spec import Group, Perms, PermutationSpec

__all__ = ["align", "cost_matrices", "solve_groups"]


def cost_matrices(
    cost: ActivationCost | str | PluginEntry, stats: Mapping[str, Sequence[PairStats]]
) -> dict[str, torch.Tensor]:
    """Each group's (units of A) x (units of B) matrix: the cost's matrix at every site,
    averaged over the group's sites, in float64. ``cost`` is a cost's name, an
    :class:`ActivationCost`, or a cost's registry entry."""
    entry = cost if isinstance(cost, PluginEntry) else COSTS.resolve(cost, "cost_matrices")
    out = {}
    for name, site_stats in stats.items():
        total = None  # summed site by site: one site's matrix alive at a time
        for s in site_stats:
            m = entry.invoke(entry.obj.matrix, s)
            total = m.to(torch.float64, copy=True) if total is None else total.add_(m)
        out[name] = total.div_(len(site_stats))
    return out


def solve_groups(
    spec: PermutationSpec,
    matrices: Mapping[str, torch.Tensor],
    *,
    maximize: bool,
    state_a: Mapping[str, torch.Tensor] | None = None,
    state_b: Mapping[str, torch.Tensor] | None = None,
    heads: HeadView | None = None,
) -> Perms:
    """The permutation of every permutable group: the linear assignment (paper eq. 2) of its
    matrix; with the models' state dicts, near-ties are broken by weight similarity and the
    groups without a matrix (nothing observes them) are matched by weight matching, the
    others held fixed. Groups without a matrix and without states keep the identity.

    ``heads``: ``spec`` is the flat view of a spec with attention heads (:func:`head_view`);
    its flat groups are solved with their structure (heads, then units within them) when all
    of a structure's groups have a matrix, and by weight matching otherwise. Head groups left
    in a spec keep their heads in place."""
    heads = heads or HeadView(spec, ())
    joint = heads.joint
    perms = spec.identity()
    groups = [g for g in spec.permutable if g.name in matrices and g.name not in joint and g.kind != "heads"]
    found = solve_assignments([matrices[g.name] for g in groups], maximize=maximize)
    perms.update({g.name: p for g, p in zip(groups, found)})
    solved = {g.name for g in groups}
    for structure in heads.structures:
        if all(f.name in matrices for f in structure.families):  # an external group's may be missing
            perms.update(heads.solve(structure, matrices, maximize=maximize))
            solved |= set(structure.names)
    if state_a is None or state_b is None:
        return perms
    perms = break_ties(spec, groups, matrices, maximize, state_a, state_b, perms)
    hidden = [g for g in spec.permutable if g.name not in solved and g.kind != "heads"]
    if hidden:  # they start from their signatures, the others stay where the data put them
        init = {name: p for name, p in perms.items() if name in solved}
        perms = match_weights(spec, state_a, state_b, groups=hidden, init=init, heads=heads)
    return perms


def solve_from_weights(
    entry: PluginEntry,
    spec: PermutationSpec,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
) -> Perms:
    """The permutation of every group that the data-free cost registered as ``entry`` finds
    from the models' state dicts; groups it leaves out keep the identity."""
    perms = spec.identity()
    found = entry.invoke(entry.obj.solve, spec, state_a, state_b)
    perms.update({k: torch.as_tensor(v, dtype=torch.long).cpu() for k, v in found.items()})
    return perms


def _permuted_copy(model: nn.Module, spec: PermutationSpec, perms: Perms) -> nn.Module:
    """``permute(model, spec, perms)`` with no working set beyond the copy: each permuted
    tensor of the copy is written from ``model``'s, gathered a few rows at a time (``permute``
    gathers every tensor whole, all of them before writing any)."""
    target = permute(model, spec, {})  # the copy, with permute's checks
    source = unwrap(model).state_dict()
    state = target.state_dict(keep_vars=True)
    index = axis_indices(spec, perms, {k: v.shape for k, v in state.items()})
    with torch.no_grad():
        for name in dict.fromkeys(name for name, _ in index):
            src, out = source[name].detach(), state[name].detach()
            step = max(1, (1 << 16) // max(1, out[0].numel()))
            for start in range(0, out.shape[0], step):
                rows = slice(start, start + step)
                out[rows] = permute_tensor(src, name, index, rows)
    return target


def _check_finite(model: nn.Module, label: str) -> None:
    for name, t in model.state_dict().items():
        # aminmax carries a NaN through, and makes no tensor of t's size (isfinite would)
        if t.is_floating_point() and t.numel() and not all(map(math.isfinite, map(float, torch.aminmax(t)))):
            raise AlignmentError(f"{label} has NaN or Inf in `{name}`; align needs finite weights.")


def _names(groups: Sequence[Group]) -> str:
    return ", ".join(g.name for g in groups[:5]) + (" ..." if len(groups) > 5 else "")


def _on_device(model_a: nn.Module, model_b: nn.Module, device: Any) -> tuple[nn.Module, nn.Module]:
    """Both models, unwrapped, checked to be one architecture with finite weights, on
    ``device`` (copies where they are elsewhere; the caller's models are never moved)."""
    model_a, model_b = unwrap(model_a), unwrap(model_b)
    check_same_architecture(model_a.state_dict(), model_b.state_dict())
    _check_finite(model_a, "model_a")
    _check_finite(model_b, "model_b")
    device = torch.device(device) if device is not None else device_of(model_a)
    if any(p.device != device for p in itertools.chain(model_a.parameters(), model_b.parameters())):
        return copy.deepcopy(model_a).to(device), copy.deepcopy(model_b).to(device)
    return model_a, model_b


def _notes(
    units: PermutationSpec,
    observed: list[Group],
    stats: Mapping[str, list[PairStats]],
    matrices: Mapping[str, torch.Tensor],
) -> list[str]:
    """What the user should know about how each kind of group was aligned."""
    notes = []
    silent = [g for g in observed if has_constant_units(stats[g.name])]
    if silent:
        notes.append(
            f"{len(silent)} group(s) have units that are constant on the data (dead ReLUs, "
            f"saturated gates: no variation beyond float rounding), whose correlations say "
            f"nothing; weight similarity decided them: {_names(silent)}"
        )
    tied = [
        g
        for g in observed
        if g not in silent
        and g.name in matrices
        and has_tied_units(matrices[g.name], 2 * TIE_SCALE * largest(matrices[g.name]))
    ]
    if tied:
        notes.append(
            f"{len(tied)} group(s) have units the data cannot tell apart (their costs are equal "
            f"to within {TIE_SCALE:g} of the largest: units that fire on the same few inputs); "
            f"weight similarity decided them: {_names(tied)}"
        )
    paired = paired_sites(units)
    unpaired = [g for g in units.permutable if g.sites and not paired[g.name]]
    if unpaired:
        notes.append(
            f"{len(unpaired)} group(s) observed only where another permuted axis runs along the "
            f"samples (a layer mixing tokens) were aligned by weight matching: {_names(unpaired)}"
        )
    hidden = [g for g in units.permutable if not g.sites and g.kind != "heads"]
    if hidden:  # e.g. head dims inside nn.MultiheadAttention: no activation to observe
        notes.append(
            f"{len(hidden)} group(s) without an observable activation were aligned by weight "
            f"matching with the others held fixed: {_names(hidden)}"
        )
    return notes


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
    adversary: Any = None,
    adversarial: str = "own",
    progress: bool = False,
    sites: str | int = "all",
    spatial_stride: int = 1,
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

    Under ``torchrun`` every rank calls ``align`` on its share of the data (a Dataset or tensor
    is split here; a DataLoader is taken as the rank's share): the statistics are summed over
    the ranks exactly and every rank gets the same permutations, those of one process on all
    the data (:mod:`modeconn.distributed`).

    Robust models: with ``adversary`` (a :class:`modeconn.attacks.PGD`) the statistics are taken
    on adversarial examples of each labelled batch, each model's own (``adversarial="own"``, the
    paper's code) or those against model A for both (``"shared"``); see
    :func:`collect_statistics`. ``progress`` shows a bar over the statistics pass.

    Cost: a group's units are often observable at several sites (a layer's output, its norm's,
    its activation's, every block of a residual stream). ``sites`` says which are observed:
    ``"all"`` of the cost's kind, ``"last"`` (one per group), or at most k of them;
    ``spatial_stride=s`` observes every s-th row and column of feature maps. Both keep exact
    recovery of a permuted copy; docs/align.md measures what they save and what they cost.
    """
    entry = COSTS.get(cost)
    cost_obj = entry.obj
    check_statistics_options(adversarial, sites, spatial_stride)
    a, b = _on_device(model_a, model_b, device)
    stream = None
    if data is not None:
        source = batches(data, batch_size=batch_size, labels=labels, num_samples=num_samples, shard=True)
        first, stream = first_batch(iter(source))
    elif cost_obj.requires_data:
        raise AlignmentError(
            f"cost {cost!r} needs data: pass a DataLoader, batches or a tensor of inputs "
            f"(or use cost='weight_matching', which needs none)"
        )
    with modes_restored(a, b):
        a.eval()
        b.eval()
        if spec is None:  # discovered on shapes only: two samples of the data, or the example
            spec = discover(
                a, example_inputs if example_inputs is not None or stream is None else first.head(2).inputs
            )
        view = head_view(spec)  # attention heads: one flat group per family of units inside them
        units = view.spec
        paired = paired_sites(units)
        observed = [
            dataclasses.replace(g, sites=paired[g.name])
            for g in units.permutable
            if paired[g.name] and g.kind != "heads"
        ]
        state_a = {k: v.detach() for k, v in a.state_dict().items()}
        state_b = {k: v.detach() for k, v in b.state_dict().items()}

        def statistics(kind: str) -> dict[str, list[PairStats]]:
            return collect_statistics(
                a,
                b,
                stream,
                units,
                kind=kind,
                groups=observed,
                adversary=adversary,
                adversarial=adversarial,
                sites=sites,
                spatial_stride=spatial_stride,
                progress=progress,
            )

        stats: dict[str, list[PairStats]] = {}
        notes: list[str] = []
        if isinstance(cost_obj, ActivationCost):
            stats = statistics(cost_obj.site_kind)
            matrices = cost_matrices(entry, stats)
            perms = solve_groups(
                units, matrices, maximize=cost_obj.maximize, state_a=state_a, state_b=state_b, heads=view
            )
            notes = _notes(units, observed, stats, matrices)
            signature = CorrelationSignature.of(observed, stats, perms) if stats else None
            perms = {**spec.identity(), **view.expand(perms)}
            matrices = None
        else:
            perms = solve_from_weights(entry, spec, state_a, state_b)
            if stream is not None and observed:
                stats = statistics("post")
            signature = CorrelationSignature.of(observed, stats, view.flatten(perms)) if stats else None
        # solved on every rank from the same all-reduced statistics; rank 0's answer is the one
        perms = distributed.current().broadcast(perms)
        spec.check(perms)
        # the statistics and matrices (units x units per site and group: of the order of the
        # models' weights on large models) are done with: the aligned copy takes their place
        stats = None
        release_freed_memory()
    aligned = _permuted_copy(model_b, spec, perms)
    return AlignResult(model=aligned, perms=perms, spec=spec, cost=cost, signature=signature, notes=notes)
