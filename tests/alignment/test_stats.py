"""``modeconn.alignment.stats``: the statistics alignment matches units by, checked against
moments computed by hand on tiny models (streaming accumulation, site choice and strided maps
have their own tests in test_align.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from modeconn import discover, permute
from modeconn.alignment.stats import Accumulator, PairStats, choose_sites, collect_statistics, paired_sites
from modeconn.errors import AlignmentError
from modeconn.symmetry.spec import Group, PermutationSpec, Site


def _mlp(seed: int, offset: float = 0.0) -> nn.Sequential:
    """Linear(4, 5) -> ReLU -> Linear(5, 2) in float64; ``offset`` added to the hidden biases
    (large means are what the accumulator's shift keeps accurate)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        model[0].bias.add_(offset)
    return model.eval()


def _convnet(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(5, 2),
        )
        .double()
        .eval()
    )


def _moments(ha: torch.Tensor, hb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Population moments of two (samples, units) matrices, by the textbook formulas."""
    n = ha.shape[0]
    ca, cb = ha - ha.mean(0), hb - hb.mean(0)
    return {
        "mean_a": ha.mean(0),
        "mean_b": hb.mean(0),
        "var_a": (ca * ca).sum(0) / n,
        "var_b": (cb * cb).sum(0) / n,
        "cov": ca.T @ cb / n,
        "cross": ha.T @ hb / n,
    }


@pytest.mark.parametrize("kind", ["pre", "post"])
def test_statistics_of_a_linear_layer_equal_moments_computed_by_hand(kind):
    a, b = _mlp(0, offset=100.0), _mlp(1, offset=-50.0)
    x = torch.randn(40, 4, dtype=torch.double)
    spec = discover(a, x[:2])
    # 40 samples in batches of 16: three batches, the last one short
    stats = collect_statistics(a, b, x, spec, kind=kind, labels=False, batch_size=16)
    assert set(stats) == {"0"}  # the hidden units; the output layer is fixed
    (pair,) = stats["0"]
    assert isinstance(pair, PairStats) and pair.kind == kind and pair.n == 40
    with torch.no_grad():
        ha, hb = a[0](x), b[0](x)
        if kind == "post":
            ha, hb = ha.relu(), hb.relu()
    for field, expected in _moments(ha, hb).items():
        torch.testing.assert_close(getattr(pair, field), expected, rtol=1e-9, atol=1e-9, msg=field)
    if kind == "pre":  # every unit varies: the correlation is Pearson's
        expected = torch.corrcoef(torch.cat([ha, hb], 1).T)[:5, 5:]
        torch.testing.assert_close(pair.correlation(), expected, rtol=1e-9, atol=1e-9)


def test_identical_models_correlate_perfectly_unit_by_unit():
    a = _convnet(0)
    x = torch.randn(6, 3, 5, 5, dtype=torch.double)
    spec = discover(a, x[:2])
    for kind in ("pre", "post"):
        stats = collect_statistics(a, copy.deepcopy(a), x, spec, kind=kind, labels=False)
        assert set(stats) == {g.name for g in spec.permutable} == {"0", "2"}
        for name, pairs in stats.items():
            assert len(pairs) == len(choose_sites(spec[name], kind)) == 1
            (pair,) = pairs
            assert pair.n == 6 * 5 * 5  # every position of the feature map is a sample
            assert torch.equal(pair.mean_a, pair.mean_b) and torch.equal(pair.var_a, pair.var_b)
            torch.testing.assert_close(pair.cov, pair.cov.T)
            torch.testing.assert_close(pair.cov.diagonal(), pair.var_a)
            corr = pair.correlation()
            live = pair.var_a > 0
            assert live.any()
            torch.testing.assert_close(corr.diagonal()[live], torch.ones(int(live.sum()), dtype=corr.dtype))
            assert (corr.abs() <= 1).all()


def test_a_permuted_copy_correlates_with_the_units_it_moved():
    a = _convnet(0)
    x = torch.randn(6, 3, 5, 5, dtype=torch.double)
    spec = discover(a, x[:2])
    perms = spec.random_permutation(1)
    b = permute(a, spec, perms)
    stats = collect_statistics(a, b, x, spec, kind="pre", labels=False)
    for name, (pair,) in stats.items():
        perm = perms[name]
        assert not torch.equal(perm, torch.arange(len(perm)))
        corr = pair.correlation()
        # unit i of B is unit perm[i] of A
        torch.testing.assert_close(
            corr[perm, torch.arange(len(perm))], torch.ones(len(perm), dtype=corr.dtype)
        )
        assert torch.equal(corr.argmax(0), perm)
        torch.testing.assert_close(pair.mean_b, pair.mean_a[perm])


def test_pair_stats_correlation_and_cross_by_hand():
    pair = PairStats(
        n=10,
        mean_a=torch.tensor([1.0, 2.0], dtype=torch.double),
        mean_b=torch.tensor([3.0, -1.0], dtype=torch.double),
        var_a=torch.tensor([4.0, 0.0], dtype=torch.double),  # unit 1 of A is constant
        var_b=torch.tensor([1.0, 9.0], dtype=torch.double),
        cov=torch.tensor([[1.0, 7.0], [0.0, 0.0]], dtype=torch.double),
        kind="pre",
    )
    # cov / (std_a std_b); no variance gives 0; rounding beyond ±1 is clamped
    expected = torch.tensor([[0.5, 1.0], [0.0, 0.0]], dtype=torch.double)
    assert torch.equal(pair.correlation(), expected)
    assert torch.equal(pair.cross, torch.tensor([[4.0, 6.0], [6.0, -2.0]], dtype=torch.double))


def test_a_unit_varying_within_rounding_of_its_site_is_constant():
    """Copies of a unit that varies by less than float rounding of its site's magnitude
    correlate at random (a permuted model sums its inputs in another order): such a unit is
    constant, and correlates 0 with everything."""
    pair = PairStats(
        n=10,
        mean_a=torch.tensor([1.0, 1.0, 0.0], dtype=torch.double),
        mean_b=torch.tensor([1.0, 1.0, 0.0], dtype=torch.double),
        var_a=torch.tensor([1e-12, 1.0, 4.0], dtype=torch.double),
        var_b=torch.tensor([1.0, 1e-12, 4.0], dtype=torch.double),
        cov=torch.tensor([[1e-12, 1e-12, 2e-6], [1.0, 1e-12, 1.0], [2.0, 2e-6, 4.0]], dtype=torch.double),
        kind="post",
        floor_a=torch.full((3,), 1e-10, dtype=torch.double),
        floor_b=torch.full((3,), 1e-10, dtype=torch.double),
    )
    const_a, const_b = pair.constant()
    assert const_a.tolist() == [True, False, False] and const_b.tolist() == [False, True, False]
    corr = pair.correlation()
    assert corr[0].eq(0).all() and corr[:, 1].eq(0).all()
    torch.testing.assert_close(corr[1:, [0, 2]], torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.double))
    # without floors only a zero variance is constant: the rounding noise correlates fully
    assert dataclasses.replace(pair, floor_a=None, floor_b=None).correlation()[0, 1] == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_floor_is_rounding_of_the_sites_magnitude_in_the_activations_dtype(dtype):
    """One unit offset by 1000 sets the site's magnitude; a unit varying by 1e-4 of it is
    constant in float32 (64 steps of 1.2e-7 · ~600 ≈ 5e-3) but not in float64."""
    big = torch.full((32,), 1000.0, dtype=torch.float64)
    tiny = 1e-4 * torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    varying = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.stack([big + varying, tiny + 0.5, varying]).to(dtype)  # (units, samples)
    acc = Accumulator(3, "post")
    acc.update(x[None], x[None])
    const_a, const_b = acc.result().constant()
    assert torch.equal(const_a, const_b)
    assert const_a.tolist() == ([False, True, False] if dtype == torch.float32 else [False, False, False])


def test_groups_and_sites_narrow_what_is_collected():
    a, b = _convnet(0), _convnet(1)
    x = torch.randn(4, 3, 5, 5, dtype=torch.double)
    spec = discover(a, x[:2])
    only = collect_statistics(a, b, x, spec, kind="post", labels=False, groups=[spec["2"]])
    both = collect_statistics(a, b, x, spec, kind="post", labels=False)
    assert set(only) == {"2"}
    for field in ("mean_a", "mean_b", "var_a", "var_b", "cov"):
        assert torch.equal(getattr(only["2"][0], field), getattr(both["2"][0], field))
    # pre-activations of conv "0" seen by hand at the output of the convolution itself
    (pre,) = collect_statistics(a, b, x, spec, kind="pre", labels=False, groups=[spec["0"]])["0"]
    with torch.no_grad():
        ha, hb = (m[0](x).movedim(1, -1).reshape(-1, 4) for m in (a, b))
    torch.testing.assert_close(pre.cov, _moments(ha, hb)["cov"], rtol=1e-9, atol=1e-9)


def test_a_spatial_stride_keeps_every_other_row_and_column():
    a, b = _convnet(0), _convnet(1)
    x = torch.randn(4, 3, 5, 5, dtype=torch.double)
    spec = discover(a, x[:2])
    (pair,) = collect_statistics(a, b, x, spec, kind="pre", labels=False, spatial_stride=2)["0"]
    assert pair.n == 4 * 3 * 3
    with torch.no_grad():
        ha, hb = (m[0](x)[:, :, ::2, ::2].movedim(1, -1).reshape(-1, 4) for m in (a, b))
    for field, expected in _moments(ha, hb).items():
        torch.testing.assert_close(getattr(pair, field), expected, rtol=1e-9, atol=1e-9, msg=field)


def test_models_are_left_in_their_modes_and_unchanged():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    b = copy.deepcopy(a).eval()
    a.train()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    x = torch.randn(8, 4, dtype=torch.double)
    collect_statistics(a, b, x, discover(a, x[:2]), labels=False)
    assert a.training and not b.training
    for k, v in a.state_dict().items():  # an eval pass: running statistics untouched
        assert torch.equal(v, before[k]), k


def test_paired_sites_drop_outputs_that_carry_two_groups():
    """A site whose output also carries another permutable group along another axis (units
    after a token-mixing layer) cannot tell the units apart: only the other sites count."""
    u = Group("u", 3, True, sites=(Site("n1", 1, 0, 1, "pre"), Site("n2", 1, 0, 1, "post")))
    v = Group("v", 4, True, sites=(Site("n2", 2, 0, 1, "post"), Site("n3", 1, 0, 1, "pre")))
    fixed = Group("out", 2, False, sites=(Site("n2", 3, 0, 1, "pre"),))
    spec = PermutationSpec(groups={"u": u, "v": v, "out": fixed})
    assert paired_sites(spec) == {"u": (u.sites[0],), "v": (v.sites[1],)}
    alone = PermutationSpec(groups={"u": u, "out": fixed})  # a fixed group's axis does not count
    assert paired_sites(alone) == {"u": u.sites}


def test_errors_are_clear():
    a, b = _mlp(0), _mlp(1)
    x = torch.randn(8, 4, dtype=torch.double)
    spec = discover(a, x[:2])
    with pytest.raises(AlignmentError, match="adversarial must be one of own, shared, got 'mine'"):
        collect_statistics(a, b, x, spec, labels=False, adversarial="mine")
    with pytest.raises(AlignmentError, match="no data: the data iterable yielded no batch"):
        collect_statistics(a, b, [], spec, labels=False)
    with pytest.raises(AlignmentError, match="sites must be one of all, last or a number >= 1"):
        collect_statistics(a, b, x, spec, labels=False, sites="first")
    with pytest.raises(AlignmentError, match=r"model_a rejected the data \(a batch of input: \(8, 3\)"):
        collect_statistics(a, b, x[:, :3], spec, labels=False)
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(AlignmentError, match="model_a's activations at node `_1` contain NaN or Inf"):
        collect_statistics(a, b, nan, spec, labels=False)
