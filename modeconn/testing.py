"""The plugin contract kit: what a third party runs in its own CI (modeconn runs it over every
plugin of every kind it registers).

Each check raises ``AssertionError`` with a message saying what is broken (explicitly, not by
``assert`` statements: ``python -O`` strips those, and a broken plugin would pass):

* :func:`check_cost` — a cost returns well-formed matrices (or permutations) and recovers a
  planted permutation (``align(A, permute(A, π))`` gives back A) on small reference models;
* :func:`check_curve_family` — the coefficients keep the curve law, a curve starts and ends
  exactly at its end points, its bends start on the segment and are all it trains;
* :func:`check_optimizer` — fitting moves the bends and only the bends, and a run resumed from
  a checkpoint ends exactly where an uninterrupted one does;
* :func:`check_rule` — on the examples given, a random permutation of every permutable group
  keeps the function (eval and train mode) and the key is really called in the traced graph.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from modeconn.alignment.costs import COSTS
from modeconn.curves.family import CURVE_FAMILIES
from modeconn.plugin_manager import hookimpl, register_plugin, reset_plugins
from modeconn.symmetry.context import RULES

__all__ = ["check_cost", "check_curve_family", "check_optimizer", "check_rule", "reference_models"]


def _require(ok: Any, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``ok``; unlike ``assert``, kept under ``python -O``."""
    if not ok:
        raise AssertionError(message)


class _Residual(nn.Module):
    """A small convnet with a residual stage and BatchNorm: groups spanning several layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c1, self.c2 = nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(5, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.c2(torch.relu(self.c1(h))))
        return self.fc2(torch.relu(self.fc1(h.mean((2, 3)))))


def reference_models(seed: int = 0) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """``(name, model, inputs)`` the checks use: an MLP and a residual convnet with random
    weights, BatchNorm statistics of the inputs, in float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
    )
    out = []
    for name, model, x in (
        ("mlp", mlp, torch.randn(128, 3, 2, 2, generator=gen)),
        ("residual", _Residual(), torch.randn(96, 3, 4, 4, generator=gen)),
    ):
        model = model.double()
        x = x.double()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        from modeconn.batchnorm import update_bn

        out.append((name, update_bn(model, [x]).eval(), x))
    return out


def _cost_entry(cost: Any):
    return COSTS.resolve(cost, "check_cost")


def check_cost(cost: Any, *, recovery: bool = True) -> None:
    """Check an alignment cost (a registered name, or an ``ActivationCost``/``WeightCost``)."""
    from modeconn.alignment.costs import ActivationCost
    from modeconn.alignment.pipeline import cost_matrices, solve_groups
    from modeconn.alignment.stats import collect_statistics
    from modeconn.symmetry import discover, permute

    entry = _cost_entry(cost)
    obj = entry.obj
    for name, a, x in reference_models():
        spec = discover(a, x[:2])
        perms = spec.random_permutation(5)
        b = permute(a, spec, perms)
        state_a, state_b = a.state_dict(), b.state_dict()
        if isinstance(obj, ActivationCost):
            _require(obj.site_kind in ("pre", "post"), f"{entry.name}: site_kind must be 'pre' or 'post'")
            _require(isinstance(obj.maximize, bool), f"{entry.name}: maximize must be a bool")
            stats = collect_statistics(a, b, x, spec, kind=obj.site_kind)
            matrices = cost_matrices(obj, stats)
            for g in spec.permutable:
                if g.name not in matrices:
                    continue
                m = matrices[g.name]
                _require(
                    m.shape == (g.size, g.size),
                    f"{entry.name}: {g.name}: matrix {tuple(m.shape)}, not {(g.size,) * 2}",
                )
                _require(torch.isfinite(m).all(), f"{entry.name}: {g.name}: the matrix has NaN or Inf")
            found = solve_groups(spec, matrices, maximize=obj.maximize, state_a=state_a, state_b=state_b)
        else:
            found = entry.invoke(obj.solve, spec, state_a, state_b)
            missing = [g.name for g in spec.permutable if g.name not in found]
            _require(not missing, f"{entry.name}: solve() returned no permutation for {missing}")
            found = {**spec.identity(), **{k: torch.as_tensor(v, dtype=torch.long) for k, v in found.items()}}
        try:
            spec.check(found)
        except Exception as e:
            raise AssertionError(f"{entry.name} on {name}: {e}") from e
        if recovery:
            got = permute(b, spec, found).state_dict()
            wrong = [k for k, v in state_a.items() if not torch.equal(v, got[k])]
            _require(
                not wrong, f"{entry.name} on {name}: a planted permutation was not recovered ({wrong[:3]})"
            )


def check_curve_family(family: Any) -> None:
    """Check a curve family (a registered name, or a ``CurveFamily`` instance)."""
    from modeconn.curves.curve import Curve
    from modeconn.curves.family import check_family_law

    entry = CURVE_FAMILIES.resolve(family, "check_curve_family")
    problem = check_family_law(entry.obj)
    _require(problem is None, f"{entry.name}: {problem}")
    _, a, x = reference_models(0)[1]
    _, b, _ = reference_models(1)[1]
    counts = [entry.obj.fixed_bends] if entry.obj.fixed_bends is not None else [entry.obj.default_bends, 2]
    for k in counts:
        curve = Curve(a, b, family=entry.obj, num_bends=k).eval()
        with torch.no_grad():
            for t, end in ((0.0, a), (1.0, b)):
                _require(
                    torch.equal(curve(x, t), end(x)), f"{entry.name}: r({t}) is not exactly the end point"
                )
            for bend, s in zip(curve.bends, entry.invoke(entry.obj.bend_times, k)):
                expected = torch.lerp(curve.ends[0], curve.ends[1], s)
                _require(
                    torch.allclose(bend, expected),
                    f"{entry.name}: a bend does not start on the segment at {s}",
                )
        if k == 0:
            continue
        curve.train()
        curve(x, 0.37).square().mean().backward()
        trainable = [n for n, p in curve.named_parameters() if p.requires_grad]
        _require(
            trainable == ["bends"], f"{entry.name}: trainable tensors are {trainable}, not just the bends"
        )
        _require(
            curve.bends.grad is not None and curve.bends.grad.abs().sum() > 0,
            f"{entry.name}: no gradient reaches the bends",
        )


def _tiny_curve_task(seed: int = 0):
    from modeconn.curves.curve import Curve

    _, a, x = reference_models(0)[1]
    _, b, _ = reference_models(1)[1]
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (len(x),), generator=gen)
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    return Curve(a, b), data


def check_optimizer(optimizer: Any, **options: Any) -> None:
    """Check a curve optimizer (a registered name or a ``CurveOptimizer`` subclass); ``options``
    are passed to it as ``fit_curve`` would."""
    from modeconn.training import fit_curve

    def run(epochs: int, checkpoint: Path | None = None):
        torch.manual_seed(0)
        curve, data = _tiny_curve_task()
        history = fit_curve(
            curve,
            data,
            optimizer=optimizer,
            epochs=epochs,
            lr=0.01,
            progress=False,
            checkpoint=checkpoint,
            **options,
        )
        return curve, history

    curve, history = run(2)
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", repr(optimizer))
    start, _ = _tiny_curve_task()
    _require(torch.equal(curve.ends, start.ends), f"{name}: the end points moved")
    _require(not torch.equal(curve.bends, start.bends), f"{name}: the bends did not move")
    _require(all(torch.isfinite(torch.tensor(r.loss)) for r in history), f"{name}: a non-finite loss")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "fit.pt"
        run(1, ckpt)  # an interrupted run: one epoch, then a second call resumes to two
        resumed, resumed_history = run(2, ckpt)
    _require(
        [r.epoch for r in resumed_history] == [1, 2], f"{name}: the resumed history is {resumed_history}"
    )
    _require(
        torch.equal(resumed.bends, curve.bends),
        f"{name}: a resumed run does not end where an uninterrupted one does (state_dict/load_state_dict "
        f"must keep everything the optimizer needs)",
    )


@contextlib.contextmanager
def _rule_installed(key: Any, rule: Any) -> Iterator[None]:
    if rule is None:
        RULES.get(key)  # a registered rule: nothing to install
        yield
        return

    class _Rule:
        @hookimpl
        def modeconn_register_rules(self, registry):
            registry.add(key, rule)

    register_plugin(_Rule(), name=f"check_rule:{key!r}")
    try:
        yield
    finally:
        reset_plugins()


def check_rule(
    key: Any, examples: Sequence[tuple[nn.Module, Any]], rule: Any = None, *, seeds: Sequence[int] = (0, 1, 2)
) -> None:
    """Check a permutation rule on ``examples`` (``(model, example_inputs)`` pairs that call the
    op ``key``): the rule registered for ``key``, or ``rule`` installed for the check."""
    from modeconn.capture import model_inputs
    from modeconn.symmetry import discover, permute
    from modeconn.symmetry.discovery import trace_model

    _require(examples, "check_rule needs at least one example model that calls the op")
    with _rule_installed(key, rule):
        for i, (model, x) in enumerate(examples):
            inputs = model_inputs(model, x)
            called = set()
            for training in (False, True):
                gm = trace_model(model, inputs, training=training)
                for n in gm.graph.nodes:
                    if n.op == "call_module":
                        called.update(type(gm.get_submodule(n.target)).__mro__)
                    elif n.op == "call_method":
                        called.add(f"method:{n.target}")
                    elif n.op == "call_function":
                        called.add(n.target)
            _require(key in called, f"example {i} never calls {key!r}: it cannot test its rule")
            spec = discover(model, x)
            for mode in (False, True):
                reference = _set_mode(copy.deepcopy(model), mode)
                with torch.no_grad():
                    y = _flat(inputs.call(reference))
                    for seed in seeds:
                        perms = spec.random_permutation(seed)
                        permuted = _set_mode(permute(model, spec, perms), mode)
                        yp = _flat(inputs.call(permuted))
                        scale = max(float(y.abs().max()), 1e-30)
                        err = float((y - yp).abs().max()) / scale
                        _require(
                            err <= 1e-6,
                            f"example {i} ({'train' if mode else 'eval'} mode, seed {seed}): a permutation the "
                            f"rule for {key!r} allowed changed the function (relative error {err:.2e})",
                        )


def _set_mode(model: nn.Module, training: bool) -> nn.Module:
    """``model`` in train or eval mode, with train-mode randomness (dropout, stochastic depth) off."""
    model.train(training)
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth":
            m.eval()
    return model


def _flat(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y.flatten().double()
    if isinstance(y, dict):
        y = list(y.values())
    return torch.cat([_flat(v) for v in y if isinstance(v, (torch.Tensor, list, tuple, dict))])
