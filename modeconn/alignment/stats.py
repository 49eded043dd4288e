"""Streaming sufficient statistics of two models' units, observed at the same sites.

For one site of one group, each batch gives activation matrices ``Xa``, ``Xb`` of shape
(samples, units) (for a convolution every spatial position is a sample). We accumulate
``n``, per-unit sums and sums of squares, and the cross products ``Xaᵀ Xb``, in float64 and
shifted by the first batch's means (which keeps the variances accurate when means are large).
Memory is O(units²) whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeconn.symmetry.spec import Site

__all__ = ["PairStats", "site_matrix"]


def site_matrix(value: torch.Tensor, site: Site, size: int) -> torch.Tensor:
    """The (samples, units) matrix of one group's units at one site output."""
    block = value.narrow(site.axis, site.start, size * site.inner)
    shape = list(block.shape)
    block = block.reshape(shape[: site.axis] + [size, site.inner] + shape[site.axis + 1 :])
    return block.movedim(site.axis, -1).reshape(-1, size)  # inner positions count as samples


@dataclass
class PairStats:
    """Sufficient statistics of model A's and model B's units at one site.

    ``mean_a``, ``mean_b``, ``var_a``, ``var_b`` are per unit; ``cov`` is the cross-covariance
    (A's units by B's units); ``cross`` the uncentred second moment E[a bᵀ]. ``kind`` says
    whether the site is before (``"pre"``) or after (``"post"``) a nonlinearity.
    """

    n: int
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    var_a: torch.Tensor
    var_b: torch.Tensor
    cov: torch.Tensor
    kind: str

    @property
    def cross(self) -> torch.Tensor:
        return self.cov + torch.outer(self.mean_a, self.mean_b)

    def correlation(self) -> torch.Tensor:
        """Pearson correlation of every unit pair (paper eq. 3); 0 where a unit has no variance."""
        std_a, std_b = self.var_a.clamp_min(0).sqrt(), self.var_b.clamp_min(0).sqrt()
        denom = torch.outer(std_a, std_b)
        corr = torch.where(denom > 0, self.cov / denom.clamp_min(1e-300), torch.zeros_like(self.cov))
        return corr.clamp(-1.0, 1.0)


class Accumulator:
    """Accumulates :class:`PairStats` for one (group, site) over batches."""

    def __init__(self, size: int, kind: str):
        self.size, self.kind = size, kind
        self.n = 0
        self.shift_a = self.shift_b = None

    def update(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        if self.shift_a is None:
            self.shift_a, self.shift_b = xa.mean(0).detach(), xb.mean(0).detach()
            self.sa = torch.zeros(self.size, dtype=torch.float64, device=xa.device)
            self.sb, self.saa, self.sbb = self.sa.clone(), self.sa.clone(), self.sa.clone()
            self.sab = torch.zeros(self.size, self.size, dtype=torch.float64, device=xa.device)
        xa, xb = xa - self.shift_a, xb - self.shift_b
        self.n += xa.shape[0]
        self.sa += xa.sum(0, dtype=torch.float64)
        self.sb += xb.sum(0, dtype=torch.float64)
        self.saa += (xa * xa).sum(0, dtype=torch.float64)
        self.sbb += (xb * xb).sum(0, dtype=torch.float64)
        self.sab += (xa.T @ xb).double()  # one GEMM per batch in the activations' precision

    def result(self) -> PairStats:
        n = self.n
        ma, mb = self.sa / n, self.sb / n
        return PairStats(
            n=n,
            mean_a=(ma + self.shift_a.double()).cpu(),
            mean_b=(mb + self.shift_b.double()).cpu(),
            var_a=(self.saa / n - ma * ma).cpu(),
            var_b=(self.sbb / n - mb * mb).cpu(),
            cov=(self.sab / n - torch.outer(ma, mb)).cpu(),
            kind=self.kind,
        )
