"""Statistics of sites that are a per-unit affine map of another site of the same group: an
eval-mode BatchNorm's output is ``s ⊙ x + t`` of its input, so its statistics follow from its
input's exactly, and observing it would only repeat the input's cross products."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.symmetry.spec import Group, Site

__all__ = ["Derived", "derived_sites", "derive"]


@dataclass(frozen=True)
class Derived:
    """A site whose value is ``scale ⊙ x + shift`` in each model, ``x`` the value at the group's
    site ``parent`` (its index in the group's chosen sites)."""

    parent: int
    scale_a: torch.Tensor
    shift_a: torch.Tensor
    scale_b: torch.Tensor
    shift_b: torch.Tensor


def _batch_norm(module: nn.Module) -> bool:
    """A BatchNorm that computes ``s ⊙ x + t`` per channel: eval mode, running statistics, and
    BatchNorm's own forward (subclasses that add an activation do not qualify)."""
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and type(module).forward is nn.modules.batchnorm._BatchNorm.forward
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _affine(module: nn.Module, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = module.running_var.double(), module.running_mean.double()
    scale = torch.rsqrt(var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().double()
    shift = -mean * scale
    if module.bias is not None:
        shift = shift + module.bias.detach().double()
    return scale[start : start + size].cpu(), shift[start : start + size].cpu()


def derived_sites(
    graph_a: fx.GraphModule, graph_b: fx.GraphModule, groups: Sequence[Group], plan: Mapping[str, list[Site]]
) -> dict[tuple[str, int], Derived]:
    """For each group's chosen sites (``plan``), those that an eval-mode BatchNorm computes from
    another chosen site of the group with the same units (channel axis 1), keyed by (group,
    index in ``plan``); their parents are observed sites."""
    nodes = {n.name: n for n in graph_a.graph.nodes}
    out: dict[tuple[str, int], Derived] = {}
    for g in groups:
        sites = plan[g.name]
        where = {s.node: i for i, s in enumerate(sites)}
        for i, site in enumerate(sites):
            node = nodes.get(site.node)
            if node is None or node.op != "call_module" or site.axis != 1 or site.inner != 1:
                continue
            source = node.args[0] if node.args else None
            parent = where.get(source.name) if isinstance(source, fx.Node) else None
            if parent is None or parent >= i or (g.name, parent) in out:
                continue
            p = sites[parent]
            if (p.axis, p.start, p.inner) != (site.axis, site.start, site.inner):
                continue
            bn_a, bn_b = graph_a.get_submodule(node.target), graph_b.get_submodule(node.target)
            if not (_batch_norm(bn_a) and _batch_norm(bn_b)):
                continue
            out[g.name, i] = Derived(
                parent, *_affine(bn_a, site.start, g.size), *_affine(bn_b, site.start, g.size)
            )
    return out


def derive(stats: Any, d: Derived, kind: str) -> Any:
    """The :class:`~modeconn.alignment.stats.PairStats` of ``scale ⊙ x + shift`` (per model)
    from those of ``x``."""
    return replace(
        stats,
        mean_a=d.scale_a * stats.mean_a + d.shift_a,
        mean_b=d.scale_b * stats.mean_b + d.shift_b,
        var_a=d.scale_a.square() * stats.var_a,
        var_b=d.scale_b.square() * stats.var_b,
        cov=d.scale_a[:, None] * stats.cov * d.scale_b[None, :],
        kind=kind,
        # the rounding of x, scaled with it: a shift does not make a constant unit vary
        floor_a=None if stats.floor_a is None else d.scale_a.square() * stats.floor_a,
        floor_b=None if stats.floor_b is None else d.scale_b.square() * stats.floor_b,
    )
