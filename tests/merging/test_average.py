"""merge: N models in one basis, averaged; every bad input gets one clear error."""

import math

import pytest
import torch
import torch.nn as nn

import modeconn
from modeconn.errors import ArchitectureMismatchError, InvalidArgumentError
from modeconn.merging import average_models, compose_perms
from modeconn.testing import reference_models

COSTS = ("correlation", "l2_preact", "weight_matching")


def _states_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{k} differs")


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))


@pytest.mark.parametrize("method", ("star", "mean"))
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("name", ("mlp", "residual"))
def test_merging_permuted_copies_gives_the_model_back_exactly(name, cost, method):
    model, x = {n: (m, x) for n, m, x in reference_models()}[name]
    spec = modeconn.discover(model, x[:2])
    copies = [model] + [modeconn.permute(model, spec, spec.random_permutation(s)) for s in (1, 2, 3)]
    # four models: a weight of 1/4 and the sums of equal terms are exact in floating point
    result = modeconn.merge(copies, x, cost=cost, method=method, repair=False, bn_data=[x])
    if name == "mlp":
        _states_equal(result.model, model)
    else:  # BatchNorm statistics are recomputed on the data they were computed on
        torch.testing.assert_close(result.model(x), model(x))
    for aligned in result.aligned:
        _states_equal(aligned, model)
    assert type(result.model) is type(model)
    assert len(result.history) == (2 if method == "mean" else 1)  # mean: nothing moves after the star start
    assert result.history[-1]["moved"] == (0 if method == "mean" else result.history[0]["moved"])


@pytest.mark.parametrize("method", ("star", "mean"))
def test_the_perms_take_each_input_to_its_aligned_copy(method):
    models = [_mlp(s) for s in range(3)]
    x = torch.randn(256, 6)
    result = modeconn.merge(models, x, method=method, repair=False)
    for model, perms, aligned in zip(models, result.perms, result.aligned):
        _states_equal(modeconn.permute(model, result.spec, perms), aligned)
        torch.testing.assert_close(aligned(x), model(x))  # the same function in the common basis
    _states_equal(result.model, average_models(result.aligned, [1 / 3] * 3))


def test_average_models_is_the_weighted_sum_and_keeps_integers_and_ties():
    a, b = _mlp(0), _mlp(1)
    out = average_models([a, b], [0.25, 0.75])
    for k, v in out.state_dict().items():
        torch.testing.assert_close(v, 0.25 * a.state_dict()[k] + 0.75 * b.state_dict()[k])
    bn = [nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(2)]
    bn[1][1].num_batches_tracked.fill_(7)
    assert int(average_models(bn, [0.5, 0.5])[1].num_batches_tracked) == 0  # the first model's

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.out = nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight

    tied = average_models([Tied(), Tied()], [0.5, 0.5])
    assert tied.out.weight is tied.emb.weight


@pytest.mark.parametrize("p1_seed, p2_seed", [(1, 2), (3, 4)])
def test_compose_perms_is_permuting_twice(p1_seed, p2_seed):
    model, x = reference_models()[1][1:]
    spec = modeconn.discover(model, x[:2])
    p1, p2 = spec.random_permutation(p1_seed), spec.random_permutation(p2_seed)
    twice = modeconn.permute(modeconn.permute(model, spec, p1), spec, p2)
    _states_equal(twice, modeconn.permute(model, spec, compose_perms(spec, p1, p2)))


def test_compose_perms_with_attention_heads():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    spec = modeconn.discover(layer, x)
    assert spec.heads, "the test needs a model with head groups"
    p1, p2 = spec.random_permutation(1), spec.random_permutation(2)
    twice = modeconn.permute(modeconn.permute(layer, spec, p1), spec, p2)
    once = modeconn.permute(layer, spec, compose_perms(spec, p1, p2))
    _states_equal(twice, once)
    torch.testing.assert_close(once(x), layer(x), rtol=1e-5, atol=1e-5)


def test_merge_of_two_models_reduces_the_interpolation_loss_increase():
    """Aligned merging keeps more of two models than the naive average: measured by how close
    the merged model's outputs stay to the end points'."""
    torch.manual_seed(0)
    x = torch.randn(512, 6)
    teacher = _mlp(10)
    y = teacher(x).detach()
    models = []
    for seed in (1, 2):
        m = _mlp(seed)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            loss = ((m(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        models.append(m)
    naive = average_models(models, [0.5, 0.5])
    merged = modeconn.merge(models, x, repair=False).model
    err = lambda m: float(((m(x).detach() - y) ** 2).mean())  # noqa: E731
    assert err(merged) < err(naive)


def test_weights_that_do_not_sum_to_one_are_normalized_with_a_note():
    models = [_mlp(0), _mlp(1)]
    result = modeconn.merge(
        models, cost="weight_matching", weights=[2, 6], repair=False, example_inputs=torch.randn(2, 6)
    )
    assert result.weights == [0.25, 0.75]
    assert any("normalized" in n for n in result.notes)
    _states_equal(result.model, average_models(result.aligned, [0.25, 0.75]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, -0.5]), "must be >= 0"),
        (dict(weights=[0.5, math.nan]), "finite"),
        (dict(weights=[1.0]), "1 weights for 2 models"),
        (dict(weights=[0, 0]), "not all be 0"),
        (dict(method="median"), "method must be one of mean, star"),
        (dict(repair="yes"), "repair must be"),
        (dict(reference=2), "reference must be the index"),
        (dict(cost="nope"), "nope"),
        (dict(cost="correlation"), "needs data"),
        (dict(repair=True), "repair=True needs data"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, match):
    kwargs = {"cost": "weight_matching", **kwargs}
    with pytest.raises(Exception, match=match):
        modeconn.merge([_mlp(0), _mlp(1)], **kwargs)


def test_one_model_is_an_error_that_points_to_repair():
    with pytest.raises(InvalidArgumentError, match="at least two models.*modeconn.repair"):
        modeconn.merge([_mlp(0)], cost="weight_matching")
    with pytest.raises(InvalidArgumentError, match="a list of models"):
        modeconn.merge(_mlp(0), cost="weight_matching")


def test_models_of_different_architectures_name_the_first_differing_tensor():
    other = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(
        ArchitectureMismatchError, match=r"models\[2\] differs from models\[0\] at `2.weight`"
    ):
        modeconn.merge([_mlp(0), _mlp(1), other], cost="weight_matching")


def test_a_batchnorm_model_without_data_says_what_to_pass():
    models = [modeconn.create_model("tinyten", widths=(4,) * 8) for _ in range(2)]
    with pytest.raises(InvalidArgumentError, match="pass bn_data="):
        modeconn.merge(models, cost="weight_matching")


def test_a_model_with_nothing_to_permute_is_averaged_with_a_note():
    models = [nn.Sequential(nn.Linear(4, 3)) for _ in range(2)]
    result = modeconn.merge(models, cost="weight_matching", example_inputs=torch.randn(2, 4))
    assert any("plain average" in n for n in result.notes)
    _states_equal(result.model, average_models(models, [0.5, 0.5]))


def test_non_finite_weights_in_a_model_are_refused():
    bad = _mlp(1)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(Exception, match="NaN or Inf"):
        modeconn.merge([_mlp(0), bad], cost="weight_matching")


def test_mean_with_weight_matching_converges_and_needs_no_data():
    models = [_mlp(s) for s in range(4)]
    result = modeconn.merge(
        models, cost="weight_matching", method="mean", max_iterations=30, example_inputs=torch.randn(2, 6)
    )
    assert result.history[-1]["moved"] == 0
    # coordinate ascent on the summed inner products: the similarity never falls
    sims = [h["similarity"] for h in result.history]
    assert all(b >= a - 1e-12 for a, b in zip(sims, sims[1:]))
    assert any("not repaired" in n for n in result.notes)


def test_mean_with_an_activation_cost_improves_on_the_star_basis_and_ends():
    models = [_mlp(s) for s in range(4)]
    x = torch.randn(512, 6)
    result = modeconn.merge(models, x, method="mean", repair=False, max_iterations=20)
    moves = [h["moved"] for h in result.history[1:]]
    assert moves[0] > 0, "the star basis of random networks is not where MergeMany stops"
    assert moves[-1] == 0
    objective = [h["objective"] for h in result.history[1:]]
    assert all(b >= a for a, b in zip(objective, objective[1:]))
    for model, perms, aligned in zip(models, result.perms, result.aligned):
        _states_equal(modeconn.permute(model, result.spec, perms), aligned)


def test_the_similarity_history_is_the_cosine_of_the_whole_parameter_vectors():
    """Summed one parameter at a time (whole float64 vectors would hold twice the models), it is
    the mean pairwise cosine of the concatenated parameters."""
    from modeconn.merging.average import _similarity

    models = [modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6, 5)) for _ in range(3)]
    flat = [torch.cat([p.detach().reshape(-1).double() for p in m.parameters()]) for m in models]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = (
        sum(float(torch.nn.functional.cosine_similarity(flat[i], flat[j], dim=0)) for i, j in pairs) / 3
    )
    assert abs(_similarity(models) - expected) < 1e-12
    assert abs(_similarity(models[:1] * 2) - 1.0) < 1e-12
