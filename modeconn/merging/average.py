"""``merge``: N models of one architecture put into one basis and averaged — each aligned to a
reference (``"star"``) or, as MergeMany (Ainsworth et al., ICLR 2023, Algorithm 3), each
re-aligned to the average of the others until no unit moves (``"mean"``) — then repaired."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from modeconn.alignment.attention_heads import head_view
from modeconn.alignment.costs import COSTS, ActivationCost
from modeconn.alignment.pipeline import align, cost_matrices, solve_groups
from modeconn.alignment.stats import collect_statistics, paired_sites
from modeconn.batchnorm import has_batchnorm, update_bn
from modeconn.errors import InvalidArgumentError
from modeconn.merging.correction import ReferenceStatistics
from modeconn.merging.correction import repair as repair_model
from modeconn.modules import unwrap
from modeconn.state import check_same_architecture
from modeconn.symmetry.permutation import permute
from modeconn.symmetry.spec import Perms, PermutationSpec

__all__ = ["merge", "MergeResult", "average_models", "compose_perms", "METHODS"]

METHODS = ("mean", "star")
"""How :func:`merge` finds the common basis: MergeMany, or every model aligned to the reference."""

REPAIRS = ("auto", True, False)


@dataclass
class MergeResult:
    """What :func:`merge` returns.

    ``model`` is the merged model (a standalone module of the inputs' class); ``aligned[i]`` is
    input ``i`` in the common basis (the same function; with ``"star"``,
    ``aligned[reference]`` is that input itself); ``perms[i]`` the permutation taking input ``i`` there (``permute(models[i], spec,
    perms[i])`` is ``aligned[i]``); ``weights`` the weights averaged with (normalized);
    ``history`` one row per iteration (``moved``: units that moved, ``similarity``: the
    mean cosine similarity of the aligned models' parameters, pair by pair, and with an
    activation cost ``objective``: the mean over the models of the cost of each unit against
    the units the others put at its position, e.g. a mean correlation); ``notes`` what
    the user should know about how it was done.
    """

    model: nn.Module
    aligned: list[nn.Module]
    perms: list[Perms]
    spec: PermutationSpec
    weights: list[float]
    method: str
    cost: str
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [
            f"MergeResult: {len(self.aligned)} models, method {self.method!r}, cost {self.cost!r}, "
            f"weights {', '.join(f'{w:.3g}' for w in self.weights)}"
        ]
        rows += [
            f"  iteration {h['iteration']}: {h['moved']} unit(s) moved, similarity {h['similarity']:.4f}"
            for h in self.history
        ]
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


def compose_perms(
    spec: PermutationSpec, first: Mapping[str, torch.Tensor], then: Mapping[str, torch.Tensor]
) -> Perms:
    """The permutations of applying ``first`` and then ``then``: ``permute(permute(m, spec,
    first), spec, then)`` is ``permute(m, spec, compose_perms(spec, first, then))``. Attention
    heads are composed as the index permutations of the axes they move, which also move the
    units inside each head."""
    view = head_view(spec)
    a, b = view.flatten({**spec.identity(), **first}), view.flatten({**spec.identity(), **then})
    return {
        **spec.identity(),
        **view.expand({g: torch.as_tensor(p)[torch.as_tensor(b[g])] for g, p in a.items()}),
    }


def _moved(perms: Mapping[str, torch.Tensor]) -> int:
    return sum(int((torch.as_tensor(p) != torch.arange(len(p))).sum()) for p in perms.values())


@torch.no_grad()
def average_models(models: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """A copy of ``models[0]`` whose floating-point parameters and buffers are the ``weights``-
    weighted sums of the models' (integer buffers, such as BatchNorm's step counters, are
    ``models[0]``'s). Tied parameters stay tied."""
    out = copy.deepcopy(unwrap(models[0]))
    # non-persistent buffers (rotary frequencies) are not in state_dict(): read the modules
    states = [dict([*unwrap(m).named_parameters(), *unwrap(m).named_buffers()]) for m in models]
    for name, t in [*out.named_parameters(), *out.named_buffers()]:
        if t.is_floating_point():
            t.copy_(sum(w * s[name].detach().to(t) for w, s in zip(weights, states)))
    return out


def _similarity(models: Sequence[nn.Module]) -> float:
    """The mean cosine similarity of the models' parameter vectors, over all pairs. Summed one
    parameter at a time: whole float64 vectors of every model would hold twice their weights."""
    n = len(models)
    dots = torch.zeros(n, n, dtype=torch.float64)
    for params in zip(*(m.parameters() for m in models)):
        flat = torch.stack([p.detach().reshape(-1).double().cpu() for p in params])
        dots += flat @ flat.T
    norms = dots.diagonal().sqrt()
    sims = [
        float(dots[i, j] / (norms[i] * norms[j]).clamp_min(1e-8)) for i in range(n) for j in range(i + 1, n)
    ]
    return sum(sims) / len(sims)


def _check_weights(weights: Sequence[float] | None, n: int, notes: list[str]) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"merge weights must be numbers, got {weights!r}") from e
    if len(weights) != n:
        raise InvalidArgumentError(
            f"merge got {len(weights)} weights for {n} models; give one weight per model"
        )
    if not all(math.isfinite(w) for w in weights):
        raise InvalidArgumentError(f"merge weights must be finite, got {weights}")
    if any(w < 0 for w in weights):
        raise InvalidArgumentError(
            f"merge weights must be >= 0, got {weights}: a weighted average with a negative weight "
            f"extrapolates and is not a merge"
        )
    total = sum(weights)
    if total <= 0:
        raise InvalidArgumentError(f"merge weights must not all be 0, got {weights}")
    if abs(total - 1.0) > 1e-9:
        notes.append(f"weights {weights} sum to {total:g}; they were normalized to sum to 1")
        weights = [w / total for w in weights]
    return weights


def _check_models(models: Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise InvalidArgumentError("merge takes a list of models: merge([model_a, model_b, ...], data)")
    models = [unwrap(m) for m in models]
    if len(models) < 2:
        raise InvalidArgumentError(
            f"merge needs at least two models, got {len(models)} (to correct one model's statistics "
            f"against references, use modeconn.repair)"
        )
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise InvalidArgumentError(f"models[{i}] is a {type(m).__name__}, not a torch.nn.Module")
    state0 = models[0].state_dict()
    for i, m in enumerate(models[1:], 1):
        check_same_architecture(state0, m.state_dict(), what=f"models[{i}]", of="models[0]")
        if type(m) is not type(models[0]):
            raise InvalidArgumentError(
                f"models[{i}] is a {type(m).__name__} and models[0] a {type(models[0]).__name__}; "
                f"merge needs models of one class"
            )
    return models


@dataclass
class _MergeState:
    """The inputs, each in the common basis, and the permutations taking it there."""

    models: list[nn.Module]
    aligned: list[nn.Module]
    perms: list[Perms]
    spec: PermutationSpec
    weights: list[float]
    history: list[dict[str, Any]]

    def others(self, i: int) -> tuple[list[int], list[float]]:
        """The other models and their weights, normalized to sum to 1."""
        others = [j for j in range(len(self.models)) if j != i]
        total = sum(self.weights[j] for j in others)
        if total <= 0:
            return others, [1.0 / len(others)] * len(others)
        return others, [self.weights[j] / total for j in others]

    def order(self, gen: torch.Generator) -> list[int]:
        return torch.randperm(len(self.models), generator=gen).tolist()


def _inner(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a if a[k].is_floating_point())


def _mean_by_weights(state: _MergeState, entry, aligned_to, *, max_iterations, seed, **_) -> bool:
    """MergeMany with weight matching: each model re-matched to the average of the others'
    weights, a move kept only when it raises the inner product with that average (so the
    summed inner products of all pairs rise at every move, and the iteration ends)."""
    gen = torch.Generator().manual_seed(seed)
    for iteration in range(1, max_iterations + 1):
        moved = 0
        for i in state.order(gen):
            others, mix = state.others(i)
            target = average_models([state.aligned[j] for j in others], mix)
            found = aligned_to(target, state.aligned[i])
            goal = target.state_dict()
            gain = _inner(goal, found.model.state_dict()) - _inner(goal, state.aligned[i].state_dict())
            step = _moved(found.perms)
            if step and gain > 1e-9 * abs(_inner(goal, goal)):
                moved += step
                state.aligned[i] = found.model
                state.perms[i] = compose_perms(state.spec, state.perms[i], found.perms)
        state.history.append(
            {"iteration": iteration, "moved": moved, "similarity": _similarity(state.aligned)}
        )
        if moved == 0:
            return True
    return False


def _mean_by_activations(
    state: _MergeState, entry, aligned_to, *, data, max_iterations, tolerance, seed, stats_options
) -> bool:
    """MergeMany with an activation cost. A unit's activations do not change when its model is
    permuted, only their order; so the cost matrix of every pair of models is measured once
    (one paired statistics pass per pair, on the inputs as they are) and each iteration only
    reorders them: model i is matched to the sum of its matrices with the others, each taken
    in that model's current order, weighted as the merge weights the others. Every move raises
    this summed objective (by more than ``tolerance`` per unit), so the iteration ends."""
    spec, cost = state.spec, entry.obj
    view = head_view(spec)
    units = view.spec
    paired = paired_sites(units)
    observed = [
        replace(g, sites=paired[g.name]) for g in units.permutable if paired[g.name] and g.kind != "heads"
    ]
    n = len(state.models)
    pair: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for i in range(n):
        for j in range(i + 1, n):
            stats = collect_statistics(
                state.models[i],
                state.models[j],
                data,
                units,
                kind=cost.site_kind,
                groups=observed,
                **stats_options,
            )
            pair[i, j] = cost_matrices(entry, stats)
            pair[j, i] = {g: m.T for g, m in pair[i, j].items()}
    sign = 1.0 if cost.maximize else -1.0
    flat = [view.flatten(p) for p in state.perms]
    originals = [{k: v.detach() for k, v in m.state_dict().items()} for m in state.models]

    def summed(i: int) -> dict[str, torch.Tensor]:
        """Model i's units (rows) against the common basis's positions (columns)."""
        others, mix = state.others(i)
        return {
            g: sum(w * pair[i, j][g][:, flat[j][g]] for j, w in zip(others, mix)) for g in pair[i, others[0]]
        }

    def objective(perm: Mapping[str, torch.Tensor], matrices: Mapping[str, torch.Tensor]) -> float:
        total = sum(float(m[perm[g], torch.arange(len(perm[g]))].sum()) for g, m in matrices.items())
        return sign * total / max(1, sum(len(perm[g]) for g in matrices))

    gen = torch.Generator().manual_seed(seed)
    for iteration in range(1, max_iterations + 1):
        moved, scores = 0, []
        for i in state.order(gen):
            matrices = summed(i)
            others, mix = state.others(i)
            goal = average_models([state.aligned[j] for j in others], mix).state_dict()
            found = solve_groups(
                units,
                {g: m.T for g, m in matrices.items()},
                maximize=cost.maximize,
                state_a=goal,
                state_b=originals[i],
                heads=view,
            )
            found = {**units.identity(), **found}
            before, after = objective(flat[i], matrices), objective(found, matrices)
            step = sum(int((found[g] != flat[i][g]).sum()) for g in found if g in flat[i])
            if step and after - before > tolerance:
                moved += step
                flat[i] = {**flat[i], **found}
                state.perms[i] = {**spec.identity(), **view.expand(flat[i])}
                state.aligned[i] = permute(state.models[i], spec, state.perms[i])
                scores.append(after)
            else:
                scores.append(before)
        state.history.append(
            {
                "iteration": iteration,
                "moved": moved,
                "similarity": _similarity(state.aligned),
                "objective": sum(scores) / len(scores),
            }
        )
        if moved == 0:
            return True
    return False


def merge(
    models: Sequence[nn.Module],
    data: Any = None,
    *,
    cost: str = "correlation",
    method: str = "mean",
    weights: Sequence[float] | None = None,
    reference: int = 0,
    repair: bool | str = "auto",
    bn_data: Any = None,
    spec: PermutationSpec | None = None,
    max_iterations: int = 10,
    tolerance: float = 1e-3,
    seed: int = 0,
    num_samples: int | None = None,
    batch_size: int = 256,
    labels: bool = True,
    example_inputs: Any = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> MergeResult:
    """Merge ``models`` (two or more of one architecture) into one: put them into one basis of
    their units, average them with ``weights`` (default uniform; weights that do not sum to 1
    are normalized, with a note) and repair the result's statistics.

    ``method="star"`` aligns every model to ``models[reference]`` (N - 1 alignments).
    ``method="mean"`` is MergeMany (Ainsworth et al. 2023, Alg. 3): starting from the star
    basis, each model in turn (in an order drawn from ``seed``) is matched to the others,
    until an iteration moves no unit (or ``max_iterations``). With weight matching a model is
    matched to the weighted average of the others' weights (no data needed). With an
    activation cost it is matched to the weighted sum of its cost matrices with each of the
    others: a unit's activations do not change when its model is permuted, only their order,
    so these are measured once, one paired statistics pass per pair of models (N(N-1)/2 of
    them, on the inputs as given), and the iterations only reorder them. In both cases a move
    is kept only when it raises the objective (by more than ``tolerance`` per unit for an
    activation cost), so the iteration ends; the permutations are consistent by construction,
    every model going into the basis the others share.

    ``cost``, ``data``, ``num_samples``, ``batch_size``, ``labels``, ``example_inputs``,
    ``device`` and ``spec`` are :func:`modeconn.align`'s.

    ``repair``: ``True`` applies REPAIR (:func:`modeconn.repair`) to the average, with the
    aligned inputs as references, on ``data`` (or ``bn_data`` when there is no ``data``);
    ``False`` leaves the plain average; ``"auto"`` repairs when there is data to repair on.
    A model with BatchNorm always has its statistics recomputed on ``bn_data`` (or ``data``)
    first: the averaged running statistics do not describe the averaged weights.
    """
    notes: list[str] = []
    models = _check_models(models)
    n = len(models)
    weights = _check_weights(weights, n, notes)
    if method not in METHODS:
        raise InvalidArgumentError(f"merge method must be one of {', '.join(METHODS)}, got {method!r}")
    if repair not in REPAIRS or isinstance(repair, int) and not isinstance(repair, bool):
        raise InvalidArgumentError(f"repair must be 'auto', True or False, got {repair!r}")
    if not (isinstance(reference, int) and -n <= reference < n):
        raise InvalidArgumentError(f"reference must be the index of one of the {n} models, got {reference!r}")
    if not (isinstance(max_iterations, int) and max_iterations >= 1):
        raise InvalidArgumentError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
    reference %= n
    cost_obj = COSTS.get(cost).obj
    if isinstance(cost_obj, ActivationCost) and data is None:
        raise InvalidArgumentError(
            f"cost {cost!r} needs data: pass merge(models, data) (or cost='weight_matching', which needs none)"
        )
    repair_data = data if data is not None else bn_data
    if repair is True and repair_data is None:
        raise InvalidArgumentError(
            "repair=True needs data to measure the models' statistics on: pass data= or bn_data= "
            "(or repair=False)"
        )
    bn = has_batchnorm(models[0])
    if bn and bn_data is None and data is None:
        raise InvalidArgumentError(
            "the models have BatchNorm, whose statistics must be recomputed for the merged weights: "
            "pass bn_data= (training batches; data= is used when given)"
        )

    def aligned_to(target: nn.Module, model: nn.Module):
        return align(
            target,
            model,
            data,
            cost=cost,
            spec=spec,
            num_samples=num_samples,
            batch_size=batch_size,
            labels=labels,
            example_inputs=example_inputs,
            device=device,
            progress=progress,
        )

    aligned: list[nn.Module] = list(models)
    perms: list[Perms | None] = [None] * n
    for i in range(n):
        if i == reference:
            continue
        found = aligned_to(models[reference], models[i])
        spec = found.spec
        aligned[i], perms[i] = found.model, found.perms
        notes += [x for x in found.notes if x not in notes]
    perms = [p if p is not None else spec.identity() for p in perms]
    if not spec.permutable:
        notes.append("no group of the models is permutable: the merge is the plain average of the weights")
    history = [{"iteration": 0, "moved": sum(_moved(p) for p in perms), "similarity": _similarity(aligned)}]

    if method == "mean" and spec.permutable and n > 2:
        iterate = _mean_by_activations if isinstance(cost_obj, ActivationCost) else _mean_by_weights
        converged = iterate(
            _MergeState(models, aligned, perms, spec, weights, history),
            COSTS.get(cost),
            aligned_to,
            data=data,
            max_iterations=max_iterations,
            tolerance=tolerance,
            seed=seed,
            stats_options=dict(
                num_samples=num_samples, batch_size=batch_size, labels=labels, progress=progress
            ),
        )
        if not converged:
            notes.append(
                f"MergeMany did not converge in {max_iterations} iterations (units still moved); "
                f"raise max_iterations to go on"
            )
    elif method == "mean" and n == 2:
        notes.append("with two models MergeMany is the star alignment: each is aligned to the other")

    merged = average_models(aligned, weights)
    if bn:
        update_bn(merged, bn_data if bn_data is not None else data, batch_size=batch_size)
        if bn_data is None:
            notes.append("BatchNorm statistics were recomputed on data (pass bn_data= to use other batches)")
    if repair is True or (repair == "auto" and repair_data is not None):
        stats = ReferenceStatistics.measure(
            aligned, repair_data, num_samples=num_samples, batch_size=batch_size, labels=labels
        )
        repair_model(
            merged,
            stats,
            repair_data,
            weights=weights,
            num_samples=num_samples,
            batch_size=batch_size,
            labels=labels,
        )
        notes += stats.notes
    elif repair == "auto":
        notes.append("not repaired: there was no data to measure statistics on (pass data= or bn_data=)")
    return MergeResult(
        model=merged,
        aligned=aligned,
        perms=perms,
        spec=spec,
        weights=weights,
        method=method,
        cost=cost,
        history=history,
        notes=notes,
    )
