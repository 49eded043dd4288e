"""Aligning and merging checkpoints that do not fit in memory twice: both models are read from
safetensors files tensor by tensor (:class:`~modeconn.tensor_files.LazyState`), permutations
are found by a data-free cost (weight matching), and the result is written in shards
(:class:`~modeconn.tensor_files.ShardWriter`).

What stays in memory: the cost's working set (for weight matching, one group's products and
its caches, about 0.2 of both models' weights on the MLPs of
``tests/merging/test_files.py``) and one shard of the output. The models' pages are read from
disk as the cost touches them and may be paged out again, so a machine needs the disk for both
checkpoints and the output, not the memory. Activation costs need both models in memory: use
:func:`~modeconn.align` there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from modeconn.alignment.costs import COSTS, WeightCost
from modeconn.alignment.pipeline import solve_from_weights
from modeconn.errors import AlignmentError
from modeconn.state import check_same_architecture
from modeconn.symmetry.permutation import axis_indices, permute_tensor
from modeconn.symmetry.spec import Perms, PermutationSpec
from modeconn.tensor_files import LazyState, ShardWriter

__all__ = ["FilesResult", "align_files", "merge_files"]


@dataclass
class FilesResult:
    """What :func:`align_files` or :func:`merge_files` wrote: the checkpoint folder ``path``,
    the permutations of model B (``perms[g][i]``: B's unit now at position ``i``) and notes."""

    path: Path
    perms: Perms
    notes: list[str] = dataclasses.field(default_factory=list)


def align_files(
    spec: PermutationSpec | str | os.PathLike,
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cost: str = "weight_matching",
    max_shard_bytes: int = 2 << 30,
) -> FilesResult:
    """Write model B's checkpoint ``b`` with its units matched to model A's (``a``) into the new
    folder ``out``, as shards; ``spec`` is the models' :class:`PermutationSpec` (from
    :func:`~modeconn.discover` on one instance of the architecture) or the path of its JSON
    (``modeconn discover MODEL --json FILE``).
    ``cost`` names a data-free cost plugin. ``out`` is refused before any work when it exists."""
    state_a, state_b, spec, notes = _open(spec, a, b)
    with ShardWriter(out, max_shard_bytes) as writer:  # removed again if the solve fails
        perms = _solve(cost, spec, state_a, state_b)
        index = axis_indices(spec, perms, {name: state_b.shape(name) for name in state_b})
        for name in state_b:
            writer.add(name, permute_tensor(state_b[name], name, index))
    return FilesResult(Path(out), perms, notes)


def merge_files(
    spec: PermutationSpec | str | os.PathLike,
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weight: float = 0.5,
    align: bool = True,
    cost: str = "weight_matching",
    max_shard_bytes: int = 2 << 30,
) -> FilesResult:
    """Write ``(1 - weight)·θ_A + weight·Pθ_B`` into the new folder ``out``, as shards: B's
    units matched to A's by ``cost`` first (``align=False``: P is the identity, the plain
    average). Integer tensors (step counters) are A's. Recompute BatchNorm statistics of the
    result on data before you use it (:func:`~modeconn.update_bn`)."""
    if not 0.0 <= weight <= 1.0:
        raise AlignmentError(f"weight must be in [0, 1] (B's share of the merge), got {weight!r}")
    state_a, state_b, spec, notes = _open(spec, a, b)
    with ShardWriter(out, max_shard_bytes) as writer:  # removed again if the solve fails
        perms = _solve(cost, spec, state_a, state_b) if align else spec.identity()
        index = axis_indices(spec, perms, {name: state_b.shape(name) for name in state_b})
        for name in state_a:
            ta = state_a[name]
            if not ta.is_floating_point():
                writer.add(name, ta)
                continue
            tb = permute_tensor(state_b[name], name, index)
            writer.add(name, torch.lerp(ta, tb.to(ta.dtype), weight))
    return FilesResult(Path(out), perms, notes)


def _open(
    spec: PermutationSpec | str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike
) -> tuple[LazyState, LazyState, PermutationSpec, list[str]]:
    """Both checkpoints, checked to be one architecture, and the spec (loaded where it is a
    path) restricted to the tensors they hold (a tied tensor is saved once: its other names are
    not in the files)."""
    spec = _load_spec(spec)
    state_a, state_b = LazyState(a), LazyState(b)
    check_same_architecture(state_a, state_b)
    held = set(state_a)
    named = {sl.tensor for g in spec for sl in g.slices}
    missing = sorted(named - held)
    notes = []
    if missing:
        if not named & held:
            raise AlignmentError(
                f"the spec names none of the tensors in {os.fspath(a)!r} (it names e.g. {missing[0]!r}): "
                f"it was discovered on another architecture, or the checkpoint's names carry a prefix"
            )
        notes.append(
            f"{len(missing)} tensor(s) the spec names are not in the checkpoints (tied tensors are "
            f"saved under one name): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
        groups = {
            name: dataclasses.replace(g, slices=tuple(sl for sl in g.slices if sl.tensor in held))
            for name, g in spec.groups.items()
        }
        spec = dataclasses.replace(spec, groups=groups, graph=None)
    return state_a, state_b, spec, notes


def _load_spec(spec: PermutationSpec | str | os.PathLike) -> PermutationSpec:
    if isinstance(spec, PermutationSpec):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise AlignmentError(
            f"spec must be a PermutationSpec or the path of its JSON, got {type(spec).__name__}"
        )
    how = "save one with `modeconn discover MODEL --json FILE` or Path(FILE).write_text(spec.to_json())"
    try:
        text = Path(spec).read_text()
    except OSError as e:
        raise AlignmentError(f"cannot read the spec {os.fspath(spec)!r} ({e.strerror}): {how}") from None
    except UnicodeDecodeError:
        raise AlignmentError(
            f"{os.fspath(spec)!r} is not a saved PermutationSpec (not text): {how}"
        ) from None
    try:
        return PermutationSpec.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AlignmentError(
            f"{os.fspath(spec)!r} is not a saved PermutationSpec ({type(e).__name__}: {e}): {how}"
        ) from None


def _solve(cost: str, spec: PermutationSpec, state_a: LazyState, state_b: LazyState) -> Perms:
    entry = COSTS.get(cost)
    if not isinstance(entry.obj, WeightCost):
        raise AlignmentError(
            f"cost {cost!r} needs activations, which needs both models in memory: use modeconn.align "
            f"there, or a data-free cost here (cost='weight_matching')"
        )
    perms = solve_from_weights(entry, spec, state_a, state_b)
    spec.check(perms)
    return perms
