"""What alignment found: the aligned model and permutations (``AlignResult``), and how well
matched units correlate before and after (``CorrelationSignature``, the paper's Fig. 1a)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from modeconn.alignment.stats import PairStats
from modeconn.symmetry.spec import Group, Perms, PermutationSpec

__all__ = ["AlignResult", "CorrelationSignature"]


@dataclass
class CorrelationSignature:
    """Per group, the mean correlation between matched units before and after alignment (the
    paper's "correlation signature", Fig. 1a), measured at the sites of ``kind``."""

    rows: list[tuple[str, int, float, float]]  # (group, units, before, after)
    kind: str

    @classmethod
    def of(
        cls, groups: list[Group], stats: Mapping[str, list[PairStats]], perms: Mapping[str, torch.Tensor]
    ) -> CorrelationSignature:
        """The signature of ``perms`` from the statistics of each group's sites."""
        rows, kinds = [], set()
        for g in groups:
            site_stats = stats.get(g.name)
            if not site_stats:
                continue
            kinds.update(s.kind for s in site_stats)
            idx, perm = torch.arange(g.size), torch.as_tensor(perms[g.name], dtype=torch.long)
            # the matched pairs' correlations only, not the units x units matrices
            before = sum(s.correlation_at(idx, idx) for s in site_stats) / len(site_stats)
            after = sum(s.correlation_at(idx, perm) for s in site_stats) / len(site_stats)
            rows.append((g.name, g.size, float(before.mean()), float(after.mean())))
        return cls(rows, "/".join(sorted(kinds)) or "none")

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
        """The correlation signature as in the paper's Fig. 1a (see :func:`modeconn.plotting.plot_signature`)."""
        from modeconn.plotting import plot_signature

        return plot_signature(self, path)

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
    """What :func:`~modeconn.align` found.

    ``model`` is a permuted copy of model B (the same function as B, its units matched to A's);
    ``perms[g][i]`` is the unit of B now at position ``i`` of group ``g``; ``signature`` is the
    correlation signature (``None`` for a data-free cost given no data).
    """

    model: nn.Module
    perms: Perms
    spec: PermutationSpec
    cost: str
    signature: CorrelationSignature | None
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        moved = sum(int((p != torch.arange(len(p))).any()) for p in self.perms.values())
        return f"<AlignResult cost={self.cost!r}: {moved}/{len(self.perms)} groups permuted>"
