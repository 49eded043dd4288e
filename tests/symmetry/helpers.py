"""Equivalence checks shared by the symmetry tests."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from modeconn import discover, permute


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights and BatchNorm statistics, so that a wrong permutation shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 or float(p.abs().max()) == 0:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = torch.cat([o.flatten(1) for o in out], 1)
    return out


def train_without_dropout(model: nn.Module) -> nn.Module:
    """Train mode (batch statistics) with the random parts off: dropout and stochastic depth."""
    from torchvision.ops import StochasticDepth

    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)):
            m.eval()
    return model


def assert_equivalent(
    model: nn.Module,
    x: torch.Tensor,
    seeds=(0, 1),
    spec=None,
    train: bool = True,
    require_permutable: bool = True,
):
    """Random permutations keep the function (eval, and train mode with dropout off), and every
    permutable group moves some tensor. Returns the spec."""
    model = model.eval()
    spec = spec or discover(model, x)
    assert spec.permutable or not require_permutable, "no permutable group at all"
    with torch.no_grad():
        y = _outputs(model, x)
        for seed in seeds:
            perms = spec.random_permutation(seed)
            permuted = permute(model, spec, perms)
            yp = _outputs(permuted.eval(), x)
            scale = float(y.abs().max())
            assert float((y - yp).abs().max()) <= 1e-4 * scale, f"eval outputs differ (seed {seed})"
            before, after = model.state_dict(), permuted.state_dict()
            for g in spec.permutable:
                if torch.equal(perms[g.name], torch.arange(g.size)):
                    continue
                assert any(not torch.equal(before[s.tensor], after[s.tensor]) for s in g.slices), g.name
            if train:  # on copies: a train-mode forward updates BatchNorm running statistics
                yt = _outputs(train_without_dropout(copy.deepcopy(model)), x)
                ytp = _outputs(train_without_dropout(permuted), x)
                assert float((yt - ytp).abs().max()) <= 1e-4 * float(yt.abs().max()), (
                    f"train outputs differ (seed {seed})"
                )
    return spec


def assert_no_group_moves_fixed_units(spec) -> None:
    """No permutable group of units owns an index that another group of units owns along the
    same axis of a tensor (a head group moves whole blocks, which may hold fixed units)."""
    owners: dict[tuple[str, int, int], str] = {}
    for g in spec:
        if g.kind != "units":
            continue
        for s in g.slices:
            for i in range(s.start, s.start + g.size * s.inner):
                other = owners.setdefault((s.tensor, s.axis, i), g.name)
                if other != g.name and (g.permutable or spec[other].permutable):
                    raise AssertionError(
                        f"{g.name} and {other} both own index {i} of {s.tensor} axis {s.axis}"
                    )
