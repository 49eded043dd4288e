"""Apply group permutations to a model's parameters and buffers."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from modeconn.errors import SymmetryError
from modeconn.modules import unwrap
from modeconn.symmetry.spec import PermutationSpec, unit_positions

__all__ = ["permute", "permute_state_dict", "soft_permute_state_dict", "permutation_matrix", "axis_indices"]


def axis_indices(
    spec: PermutationSpec, perms: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size]
) -> dict[tuple[str, int], torch.Tensor]:
    """For every (tensor, axis) a permutation touches, the gather index along that axis.

    Convention: ``perms[g][i]`` is the original unit that ends up at position ``i``. Head
    groups move whole heads after the other groups have permuted the units inside them: head
    ``i`` of the result is head ``perms[g][i]`` of the original, its units in the order its
    own groups give them.
    """
    spec.check(perms)
    out: dict[tuple[str, int], torch.Tensor] = {}
    for name, perm in _ordered(spec, perms):
        group = spec.groups[name]
        perm = torch.as_tensor(perm, dtype=torch.long).cpu()
        if not group.permutable or torch.equal(perm, torch.arange(group.size)):
            continue
        for sl in group.slices:
            if sl.tensor not in shapes:
                raise SymmetryError(f"the spec refers to {sl.tensor!r}, which this model does not have")
            key = (sl.tensor, sl.axis)
            if key not in out:
                out[key] = torch.arange(shapes[sl.tensor][sl.axis])
            end = sl.start + group.size * sl.inner
            if group.kind == "heads":  # composed with the permutations inside the heads
                out[key][sl.start : end] = out[key][sl.start : end][unit_positions(perm, 0, sl.inner)]
            else:
                out[key][sl.start : end] = unit_positions(perm, sl.start, sl.inner)
    return out


def _ordered(spec: PermutationSpec, items: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Groups of units first, then head groups (which move blocks of the others' units)."""
    return sorted(items.items(), key=lambda kv: spec.groups[kv[0]].kind == "heads")


def permute_tensor(
    t: torch.Tensor, name: str, index: Mapping[tuple[str, int], torch.Tensor], rows: slice | None = None
) -> torch.Tensor:
    """Tensor ``name`` with every axis ``index`` names gathered (``index`` from
    :func:`axis_indices`); with ``rows``, only those rows of the result, so a large tensor can
    be written a piece at a time."""
    if rows is not None:
        first = index.get((name, 0))
        t = t[rows] if first is None else t.index_select(0, first[rows].to(t.device))
    for axis in range(0 if rows is None else 1, t.dim()):
        if (name, axis) in index:
            t = t.index_select(axis, index[name, axis].to(t.device))
    return t


def permute_state_dict(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with every permuted axis gathered; untouched entries are shared."""
    index = axis_indices(spec, perms, {k: v.shape for k, v in state.items()})
    new = dict(state)
    for name in dict.fromkeys(name for name, _ in index):
        new[name] = permute_tensor(new[name], name, index)
    return new


def permute(
    model: nn.Module, spec: PermutationSpec, perms: Mapping[str, torch.Tensor], inplace: bool = False
) -> nn.Module:
    """A model computing the same function as ``model`` with its units permuted by ``perms``
    (parameters and buffers alike). ``perms[g][i]`` is the unit of group ``g`` that moves to
    position ``i``; groups left out keep their order. A wrapped model (DataParallel, DDP,
    ``torch.compile``) is unwrapped: the result is the plain module."""
    model = unwrap(model)
    try:
        target = model if inplace else copy.deepcopy(model)
    except RuntimeError as e:
        if "weight_norm" not in str(e):
            raise
        raise SymmetryError(
            "the model uses the hook-based torch.nn.utils.weight_norm or spectral_norm, whose modules "
            "cannot be copied after a forward pass: use torch.nn.utils.parametrizations.weight_norm "
            "(or .spectral_norm) instead, or permute(..., inplace=True)"
        ) from e
    state = target.state_dict(keep_vars=True)
    new = permute_state_dict({k: v.detach() for k, v in state.items()}, spec, perms)
    with torch.no_grad():
        for k, v in state.items():
            if new[k] is not v.detach():
                v.copy_(new[k])
    return target


def permutation_matrix(perm: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The matrix ``P`` of a permutation in modeconn's convention (``P[i, perm[i]] = 1``): unit
    ``i`` of ``P·x`` is unit ``perm[i]`` of ``x``."""
    perm = torch.as_tensor(perm, dtype=torch.long)
    out = torch.zeros(len(perm), len(perm), dtype=dtype, device=perm.device)
    out[torch.arange(len(perm), device=perm.device), perm] = 1
    return out


def soft_permute_state_dict(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, matrices: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with each group's units mixed by its matrix: along every slice of group
    ``g``, unit ``i`` becomes ``Σ_j matrices[g][i, j]`` × unit ``j`` (``P·W·Pᵀ`` for a weight
    between two groups). With permutation matrices (:func:`permutation_matrix`) this is
    :func:`permute_state_dict` exactly; with doubly stochastic ones it is PAM's relaxation. It
    is differentiable in the matrices. Groups left out, and entries no group touches, are
    shared with ``state``; tensors the spec names but ``state`` lacks are skipped (pass the
    parameters alone to mix only them)."""
    new = dict(state)
    for name, matrix in _ordered(spec, matrices):
        group = spec.groups[name]
        n = group.size
        if matrix.shape != (n, n):
            raise SymmetryError(f"the matrix of group {name!r} is {tuple(matrix.shape)}, not {(n, n)}")
        for sl in group.slices:
            t = new.get(sl.tensor)
            if t is None or not t.is_floating_point():
                continue
            length = n * sl.inner
            block = t.narrow(sl.axis, sl.start, length)
            units = block.reshape(math.prod(block.shape[: sl.axis]), n, -1)
            mixed = torch.matmul(matrix.to(units), units).reshape(block.shape)
            if length == t.shape[sl.axis]:
                new[sl.tensor] = mixed
            else:
                head = t.narrow(sl.axis, 0, sl.start)
                tail = t.narrow(sl.axis, sl.start + length, t.shape[sl.axis] - sl.start - length)
                new[sl.tensor] = torch.cat([head, mixed, tail], sl.axis)
    return new
