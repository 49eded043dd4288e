"""Built-in curve optimizer ``pam``: learn a permutation of end point B together with the curve.

Proximal alternating minimization (Attouch et al. 2010) of the paper's joint problem (Tatro et
al. 2020, eq. 5, Appendix E)

    min over (P, φ) of  E_t L(r_φ(t; θ_A, P·θ_B)),

alternating two blocks per outer iteration. A *permutation phase* of ``perm_epochs`` epochs
holds the curve's offsets φ fixed and takes projected proximal gradient steps on one relaxed
(doubly stochastic) matrix per permutable group of :func:`modeconn.discover`'s spec, applied to
every slice of the group by :func:`~modeconn.plugin.soft_permute_state_dict` — so residual
streams, concatenations, grouped convolutions and attention heads need no code here. The phase
ends by rounding the matrices to a permutation, which becomes B's. A *curve phase* of
``curve_epochs`` epochs is ordinary curve fitting of the bends, with the proximal pull.

The bends are parametrized as in the paper's code: bend j = (1 − s_j)·θ_A + s_j·P·θ_B + φ_j,
where s_j is the bend's position on the segment (½ for the quadratic Bézier curve), so the
bends follow the permuted end point; φ is the curve's offset from the segment at the start of
the fit (0 for a fresh curve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import modeconn
from modeconn.plugin import (
    PROJECTIONS,
    CurveOptimizer,
    Perms,
    birkhoff_decomposition,
    distance_from_doubly_stochastic,
    hookimpl,
    nearest_permutation,
    permutation_matrix,
    permute_state_dict,
    project_doubly_stochastic,
    soft_permute_state_dict,
)

__all__ = ["PAM"]

INITS = ("identity", "alignment")


class PAM(CurveOptimizer):
    """The ``pam`` optimizer: ``fit_curve(curve, data, optimizer="pam", epochs=..., **options)``.

    Options (defaults from the paper's code):

    * ``init``: the first permutation of B — ``"identity"`` (PAM Unaligned), ``"alignment"``
      (PAM Aligned: :func:`modeconn.align` of B to A by ``align_cost`` on the first
      ``align_samples`` training samples), or a dict of permutations of the spec's groups.
    * ``outer_iters`` (1), ``perm_epochs`` (20) and ``curve_epochs``: each outer iteration is a
      permutation phase then a curve phase; ``epochs`` must be
      ``outer_iters * (perm_epochs + curve_epochs)`` (``curve_epochs`` defaults to what is left).
    * ``perm_lr_scale`` (0.5): the permutation step is plain SGD (no momentum, no weight decay)
      at this fraction of the curve's learning rate. The curve's schedule (the settings'
      ``schedule``) spans and counts curve epochs only, so the curve phase is ordinary curve fitting.
    * ``prox`` (ν = 1e3): the weight of the proximal terms ‖P − P_k‖²/(2ν) and ‖φ − φ_k‖²/(2ν),
      applied after each step in closed form, pulling toward the block's value at its start.
    * ``projection`` (``"alternating"``, the paper's; or ``"exact"``, ``"sinkhorn"``) and
      ``projection_iters`` (20): how each step returns to the doubly stochastic set.
    * ``candidates`` (32) and ``bvn_terms`` (11): rounding scores the assignment of each matrix,
      the previous permutation, and ``candidates`` samples from each matrix's Birkhoff–von
      Neumann decomposition (its ``bvn_terms`` largest terms, drawn by weight, each group
      independently) by the training loss on ``score_batches`` (8) batches, batch i at
      t = (i + ½)/n (BatchNorm in train mode, as in training); the lowest wins.
    * ``spec``: the permutation spec of the curve's model (default: ``modeconn.discover`` on
      the first training batch).

    The permutation is relative to end point B as the curve held it when the fit started;
    ``fit_curve(...).summary`` holds it (``"perms"``) and one log entry per outer iteration
    (``"log"``). To compose it with an alignment ``a`` that produced that B:
    ``{g: a[g][p[g]] for g in p}``.
    """

    def __init__(
        self,
        curve: modeconn.Curve,
        settings: modeconn.Settings | None = None,
        *,
        init: str | Mapping[str, torch.Tensor] = "identity",
        outer_iters: int = 1,
        perm_epochs: int = 20,
        curve_epochs: int | None = None,
        perm_lr_scale: float = 0.5,
        prox: float = 1e3,
        projection: str = "alternating",
        projection_iters: int = 20,
        candidates: int = 32,
        bvn_terms: int = 11,
        score_batches: int = 8,
        align_cost: str = "correlation",
        align_samples: int | None = 2048,
        spec: modeconn.PermutationSpec | None = None,
        epochs: int,
        **kwargs: Any,
    ):
        if isinstance(init, str) and init not in INITS:
            raise modeconn.InvalidArgumentError(
                f"init must be one of {', '.join(INITS)} or a dict of permutations, got {init!r}"
            )
        if projection not in PROJECTIONS:
            raise modeconn.InvalidArgumentError(
                f"unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}"
            )
        for name, value in (("outer_iters", outer_iters), ("score_batches", score_batches)):
            if value < 1:
                raise modeconn.InvalidArgumentError(f"{name} must be >= 1, got {value}")
        for name, value in (
            ("perm_epochs", perm_epochs),
            ("candidates", candidates),
            ("bvn_terms", bvn_terms),
        ):
            if value < 0:
                raise modeconn.InvalidArgumentError(f"{name} must be >= 0, got {value}")
        if prox <= 0 or perm_lr_scale <= 0:
            raise modeconn.InvalidArgumentError("prox and perm_lr_scale must be positive")
        if curve_epochs is None:
            curve_epochs = epochs // outer_iters - perm_epochs
        if curve_epochs < 0 or outer_iters * (perm_epochs + curve_epochs) != epochs:
            raise modeconn.InvalidArgumentError(
                f"pam runs outer_iters × (perm_epochs + curve_epochs) epochs = {outer_iters} × "
                f"({perm_epochs} + {curve_epochs}); fit_curve was given epochs={epochs}. "
                "Pass epochs to match, or set perm_epochs / curve_epochs"
            )
        self.init, self.outer_iters, self.perm_epochs = init, outer_iters, perm_epochs
        self.curve_epochs = curve_epochs
        super().__init__(curve, settings, epochs=epochs, **kwargs)
        self.perm_lr_scale, self.prox = perm_lr_scale, prox
        self.projection, self.projection_iters = projection, projection_iters
        self.candidates, self.bvn_terms, self.score_batches = candidates, bvn_terms, score_batches
        self.align_cost, self.align_samples = align_cost, align_samples
        self.spec = spec
        self.perms: Perms | None = None  # B's hard permutation, relative to B at the fit's start
        self.matrices: dict[str, torch.Tensor] | None = None  # relaxed P during a permutation phase
        self.anchor: dict[str, torch.Tensor] | None = None  # P_k: the matrices at the phase's start
        self.bends_anchor: torch.Tensor | None = None  # φ_k: the bends at the curve phase's start
        self.log: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self.phase = "perm"
        self.scheduler = _CurveEpochsOnly(self, self.scheduler)
        self.score_seed = self.strategy.shared_seed()

    # -- setup -----------------------------------------------------------------------------
    def schedule_epochs(self, epochs: int) -> int:
        return self.outer_iters * self.curve_epochs  # the schedule advances in curve epochs only

    def on_fit_start(self, data: Any, epochs: int) -> None:
        curve = self.curve
        device, dtype = curve.ends.device, curve.ends.dtype
        # the scoring batches are drawn under their own seed, so that a resumed fit scores
        # on the same ones and the training batches' shuffling is not disturbed; under torchrun
        # each rank scores on its own and the objective is their mean
        self._score: list[tuple[Any, torch.Tensor]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.score_seed)
            for batch in data:
                batch = batch.to(device, dtype)
                self._score.append((batch.x, batch.target))
                if len(self._score) == self.score_batches:
                    break
        if self.spec is None:
            first = self._score[0][0]
            probe = first[:2] if isinstance(first, torch.Tensor) else first
            self.spec = modeconn.discover(curve.base, probe)
        self.groups = [g.name for g in self.spec.permutable]
        self.theta_a = curve.ends[0].detach()
        times = curve.family.bend_times(curve.num_bends)
        self.bend_times = [float(s) for s in times]
        self.phi = self._offset()
        if self._pending is not None:  # a resume: B as the curve holds it is P·θ_B
            saved, self._pending = self._pending, None
            self.perms = {g: torch.as_tensor(p) for g, p in saved["perms"].items()}
            inverse = {g: torch.argsort(p) for g, p in self.perms.items()}
            self.theta_b = permute_state_dict(curve.end_state(1), self.spec, inverse)
            if saved["matrices"] is not None:
                self.matrices = {
                    g: m.to(device, dtype).requires_grad_(True) for g, m in saved["matrices"].items()
                }
                self.anchor = {g: m.to(device, dtype) for g, m in saved["anchor"].items()}
                curve.set_parametrization(self._soft_rows)
            if saved["bends_anchor"] is not None:
                self.bends_anchor = saved["bends_anchor"].to(device, dtype)
            return
        self.theta_b = curve.end_state(1)
        self.perms = self._initial_perms(data)
        self._set_hard(self.perms)

    def _initial_perms(self, data: Any) -> Perms:
        if isinstance(self.init, Mapping):
            perms = {
                **self.spec.identity(),
                **{g: torch.as_tensor(p, dtype=torch.long) for g, p in self.init.items()},
            }
            self.spec.check(perms)
            return perms
        if self.init == "identity":
            return self.spec.identity()
        model_a, model_b = self.curve.model_at(0.0), self.curve.model_at(1.0)  # eval mode: B's own statistics
        result = modeconn.align(
            model_a,
            model_b,
            ((batch.x, batch.target) for batch in data),
            cost=self.align_cost,
            spec=self.spec,
            num_samples=self.align_samples,
        )
        return result.perms

    # -- the two parametrizations of the curve ---------------------------------------------
    def _offset(self) -> torch.Tensor:
        """φ: each bend's offset from its point on the segment between the curve's end points
        (fit_curve refuses a curve without bends)."""
        curve = self.curve
        return torch.stack(
            [
                curve.bends[j].detach() - torch.lerp(curve.ends[0], curve.ends[1], s)
                for j, s in enumerate(self.bend_times)
            ]
        )

    def _rows_through(self, end_b: torch.Tensor) -> list[torch.Tensor]:
        bends = [torch.lerp(self.theta_a, end_b, s) + self.phi[j] for j, s in enumerate(self.bend_times)]
        return [self.theta_a, *bends, end_b]

    def _soft_rows(self, curve: modeconn.Curve) -> list[torch.Tensor]:
        # the parameters alone (every name of a tied one): the rows hold no buffers
        buffers = set(curve.buffer_names)
        params = {n: t for n, t in self.theta_b.items() if n not in buffers}
        return self._rows_through(curve.flatten(soft_permute_state_dict(params, self.spec, self.matrices)))

    def _hard_end(self, perms: Perms) -> dict[str, torch.Tensor]:
        return permute_state_dict(self.theta_b, self.spec, perms)

    @torch.no_grad()
    def _set_hard(self, perms: Perms) -> None:
        """Make ``perms`` B's permutation: the end point and the bends follow it."""
        curve = self.curve
        curve.set_parametrization(None)
        self.phi = self._offset()  # what the last curve phase learned moves with B
        curve.set_end(1, self._hard_end(perms))
        curve.bends.copy_(torch.stack(self._rows_through(curve.ends[1])[1:-1]))

    # -- objective -------------------------------------------------------------------------
    @torch.no_grad()
    def objective(self, rows: Any = None) -> float:
        """The training loss (:meth:`criterion`: ``fit_curve``'s ``loss_fn`` when given) of the
        curve (or of the rows ``rows(curve)`` gives) on the scoring batches, batch i of n at t = (i + ½)/n."""
        curve = self.curve
        was_training, saved = curve.training, curve.parametrization
        curve.train()
        if rows is not None:
            curve.set_parametrization(rows)
        n = len(self._score)
        ts = [(i + 0.5) / n for i in range(n)]  # midpoints: the end points alone say nothing of φ
        total = torch.zeros(2, dtype=torch.float64)
        try:
            for (x, y), t in zip(self._score, ts):
                total[0] += float(self.criterion(curve(x, t), y)[0])
                total[1] += 1
        finally:
            curve.set_parametrization(saved)
            curve.train(was_training)
        self.strategy.all_reduce(total)  # every rank takes the same decision
        return float(total[0] / total[1])

    def _hard_rows(self, perms: Perms) -> Any:
        end_b = self.curve.flatten(self._hard_end(perms))
        rows = self._rows_through(end_b)
        return lambda curve: rows

    # -- phases ----------------------------------------------------------------------------
    def _phase(self, epoch: int) -> tuple[int, str, int]:
        """(outer iteration, phase, epoch within the iteration), all 0-based but the phase."""
        block = self.perm_epochs + self.curve_epochs
        k, within = divmod(epoch - 1, block)
        return k, ("perm" if within < self.perm_epochs else "curve"), within

    def on_epoch_start(self, epoch: int) -> None:
        k, phase, within = self._phase(epoch)
        self.phase = phase
        if phase == "perm" and within == 0 and self.matrices is None:
            self.log.append(
                {"iteration": k + 1, "objective_start": self.objective(), "distance_from_ds": 0.0}
            )
            self.anchor = {
                g: permutation_matrix(self.perms[g], self.curve.ends.dtype).to(self.curve.ends.device)
                for g in self.groups
            }
            self.matrices = {g: m.clone().requires_grad_(True) for g, m in self.anchor.items()}
            self.phi = self._offset()
            self.curve.set_parametrization(self._soft_rows)
        if phase == "curve" and within == self.perm_epochs and self.bends_anchor is None:
            if not self.log or self.log[-1]["iteration"] != k + 1:  # perm_epochs == 0
                self.log.append({"iteration": k + 1, "objective_start": self.objective()})
            self.bends_anchor = self.curve.bends.detach().clone()

    def on_epoch_end(self, epoch: int) -> None:
        k, phase, within = self._phase(epoch)
        if phase == "perm" and within == self.perm_epochs - 1:
            self._round()
        if phase == "curve" and within == self.perm_epochs + self.curve_epochs - 1:
            self.bends_anchor = None
            self.log[-1]["objective_after_curve"] = self.objective()

    def training_step(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lr = self.optimizer.param_groups[0]["lr"]
        pull = lr / self.prox  # closed-form proximal step: argmin ‖X − X̃‖²/(2η) + ‖X − X_k‖²/(2ν)
        if self.matrices is None:
            loss, logits = super().training_step(x, y)
            with torch.no_grad():
                self.curve.bends.add_(self.bends_anchor, alpha=pull).div_(1 + pull)
            return loss, logits
        for m in self.matrices.values():
            m.grad = None
        # the bends do not train in this phase, so the step bypasses DDP (which would wait for
        # their gradients) and averages the matrices' gradients over the ranks itself
        wrapped, self.wrapped = self.wrapped, self.curve
        try:
            loss, logits = self.call_hook("loss", x, y)
        finally:
            self.wrapped = wrapped
        loss.backward()
        if self.strategy.world_size > 1:
            for m in self.matrices.values():
                if m.grad is not None:
                    self.strategy.all_reduce(m.grad).div_(self.strategy.world_size)
        step = self.perm_lr_scale * lr
        pull = step / self.prox
        worst = self.log[-1]["distance_from_ds"]
        with torch.no_grad():
            for g, m in self.matrices.items():
                if m.grad is not None:
                    m.sub_(m.grad, alpha=step)
                m.add_(self.anchor[g], alpha=pull).div_(1 + pull)
                m.copy_(project_doubly_stochastic(m, self.projection, iters=self.projection_iters))
                worst = max(worst, distance_from_doubly_stochastic(m))
        self.log[-1]["distance_from_ds"] = worst
        return loss.detach(), logits.detach()

    # -- rounding --------------------------------------------------------------------------
    def rounding_candidates(self) -> list[tuple[str, Perms]]:
        """The hard permutations rounding chooses from, each with where it came from: the
        previous permutation, the assignment of each matrix, and samples of their BvN terms."""
        out = [
            ("previous", dict(self.perms)),
            ("assignment", {**self.perms, **{g: nearest_permutation(m) for g, m in self.matrices.items()}}),
        ]
        if self.candidates:
            terms = {g: birkhoff_decomposition(m, max_terms=self.bvn_terms) for g, m in self.matrices.items()}
            for _ in range(self.candidates):
                sample = dict(self.perms)  # every group of the spec, the fixed ones at the identity
                for g, ts in terms.items():
                    if not ts:
                        sample[g] = self.perms[g]
                        continue
                    weights = torch.tensor([q for q, _ in ts], dtype=torch.double)
                    pick = int(torch.multinomial(weights, 1, generator=self.generator))
                    sample[g] = ts[pick][1]
                out.append(("birkhoff", sample))
        unique, seen = [], set()
        for source, perms in out:
            key = tuple(tuple(perms[g].tolist()) for g in self.groups)
            if key not in seen:
                seen.add(key)
                unique.append((source, perms))
        return unique

    def _round(self) -> None:
        entry = self.log[-1]
        entry["objective_relaxed"] = self.objective(self._soft_rows)
        scored = [
            (self.objective(self._hard_rows(p)), i, source, p)
            for i, (source, p) in enumerate(self.rounding_candidates())
        ]
        loss, _, source, best = min(scored, key=lambda s: (s[0], s[1]))
        entry.update(
            objective_rounded=loss,
            winner=source,
            candidates=len(scored),
            reassigned={g: int((best[g] != self.perms[g]).sum()) for g in self.groups},
        )
        self.matrices = self.anchor = None
        self.perms = {g: p.clone() for g, p in best.items()}
        self._set_hard(self.perms)

    # -- checkpoints and results -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def cpu(d: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {g: t.detach().cpu() for g, t in d.items()}

        return {
            **super().state_dict(),
            "perms": cpu(self.perms),
            "matrices": cpu(self.matrices),
            "anchor": cpu(self.anchor),
            "bends_anchor": None if self.bends_anchor is None else self.bends_anchor.cpu(),
            "log": self.log,
            "score_seed": self.score_seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.log = list(state["log"])
        self.score_seed = state["score_seed"]
        self.perms = dict(state["perms"])
        self._pending = state

    def summary(self) -> dict[str, Any]:
        return {"perms": self.perms, "log": self.log, "spec": self.spec}


class _CurveEpochsOnly:
    """The curve's learning-rate schedule, advanced by curve epochs only: each curve phase
    continues the ordinary schedule where the last one stopped, and a permutation phase runs at
    ``perm_lr_scale`` × the rate the schedule is at."""

    def __init__(self, pam: PAM, schedule: Any):
        self.pam, self.schedule = pam, schedule

    def step(self) -> None:
        if self.pam.phase == "curve":
            self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


@hookimpl
def modeconn_register_optimizers(registry) -> None:
    registry.add("pam", PAM)
