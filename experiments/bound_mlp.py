"""Theorem 3.1 measured (issue 31, reviewer 1): how tight is the paper's bound on the loss along
the straight line between two networks, before and after aligning them?

Two ReLU MLPs (64-w-w-w-10, the paper's feed-forward form, eq. 4) are trained from different
seeds on the embedded digits (8x8, 1,438 training images, not augmented).
B is aligned to A by ``l2_preact`` (the theorem's alignment: least squared distance between
pre-activations) and by ``correlation`` (the paper's choice in practice). For each pair, on the
training set, at ``--points`` t along the line θ(t) = (1 - t)·θ_A + t·θ_B:

- the measured loss L(t);
- the bound, built as the proof outline of Section 3.1 builds it, layer by layer from the end
  point the network is compared to (E, A for t ≤ 1/2, B beyond)::

      δ_1 = s·ε_1,   δ_l ≤ ‖W_l(t)‖₂ · Lip(σ) · δ_{l-1} + s·ε_l,   L(t) ≤ L_E + Lip(CE) · δ_L

  where δ_l is the root-mean-square distance between the line's and E's pre-activations of
  layer l, s = t (or 1 - t) the distance along the line, ε_l the root-mean-square of
  (W_l^other - W_l^E)·h_{l-1}^E + (b_l^other - b_l^E) (for l = 1, exactly the pre-activation
  distance ``l2_preact`` minimizes), ‖W_l(t)‖₂ the spectral norm (computed exactly), Lip(ReLU)
  = 1 (exact) and Lip(CE) = √2 (its gradient in the logits, softmax − one-hot, has norm at
  most √2: a standard upper bound, not measured); Jensen's inequality turns the mean distance
  into its root-mean-square;
- the same last step with the measured δ_L in place of its bound, to show which step loosens
  the bound.

The paper's Appendix C.1 (the full proof) is not in ``../shared/seeds``; this is the bound its
outline describes, derived here. Runs in about a minute on two cores; no CIFAR-10 needed.

    python experiments/bound_mlp.py
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import modeconn
from modeconn.data import Digits

from common import OUT

LIP_CE = math.sqrt(2.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=3, help="hidden layers")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--points", type=int, default=21)
    p.add_argument("--out", default=str(OUT / "bound_mlp"))
    args = p.parse_args()

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = Digits(train=True, augment=False, image_size=8)
    x = torch.stack([train[i][0] for i in range(len(train))]).flatten(1)
    y = torch.tensor([train[i][1] for i in range(len(train))])

    results = []
    for pair in range(args.pairs):
        a, b = (_trained(args, x, y, seed) for seed in (2 * pair + 1, 2 * pair + 2))
        row = {"pair": pair}
        for name in ("unaligned", "l2_preact", "correlation"):
            end_b = b if name == "unaligned" else modeconn.align(a, b, x, cost=name, labels=False).model
            row[name] = _along_line(a, end_b, x, y, args.points)
            r = row[name]
            print(
                f"pair {pair} {name:>11}: mean loss {_mean(r['loss']):.3f}, bound {_mean(r['bound']):.2f} "
                f"(with measured δ_L: {_mean(r['bound_measured_output']):.3f}), max loss {max(r['loss']):.3f}",
                flush=True,
            )
        results.append(row)
    _report(results)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "pairs": results}, indent=1))
    _plot(results[0], out / "bound_pair0.png")


def _trained(args, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    widths = [x.shape[1], *[args.width] * args.depth]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    modeconn.train_model(model, (x, y), epochs=args.epochs, lr=0.05, batch_size=128, progress=False)
    return model.eval()


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


@torch.no_grad()
def _preactivations(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's pre-activation z_l (the last is the logits) for weights ``layers``."""
    zs, h = [], x
    for i, (w, bias) in enumerate(layers):
        z = h @ w.T + bias
        zs.append(z)
        h = F.relu(z) if i < len(layers) - 1 else z
    return zs


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).sum(1).mean().sqrt())


@torch.no_grad()
def _bound_from(end, other, line, s: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The bound on the loss at the line's point ``line`` from end point ``end`` at distance
    ``s`` along the line, and the same with the measured output distance."""
    z_end = _preactivations(end, x)
    inputs = [x] + [F.relu(z) for z in z_end[:-1]]  # h_{l-1} of the end point
    delta = 0.0
    for (w_t, _), (w_e, b_e), (w_o, b_o), h in zip(line, end, other, inputs):
        eps = _rms(h @ (w_o - w_e).T + (b_o - b_e))
        delta = float(torch.linalg.matrix_norm(w_t, ord=2)) * delta + s * eps  # Lip(ReLU) = 1
    loss_end = float(F.cross_entropy(z_end[-1], y))
    measured = _rms(_preactivations(line, x)[-1] - z_end[-1])
    return loss_end + LIP_CE * delta, loss_end + LIP_CE * measured


@torch.no_grad()
def _along_line(a: nn.Sequential, b: nn.Sequential, x: torch.Tensor, y: torch.Tensor, points: int) -> dict:
    wa = [(m.weight, m.bias) for m in _linears(a)]
    wb = [(m.weight, m.bias) for m in _linears(b)]
    ts = [i / (points - 1) for i in range(points)]
    row = {"t": ts, "loss": [], "bound": [], "bound_measured_output": []}
    for t in ts:
        line = [(torch.lerp(w1, w2, t), torch.lerp(c1, c2, t)) for (w1, c1), (w2, c2) in zip(wa, wb)]
        loss = float(F.cross_entropy(_preactivations(line, x)[-1], y))
        bound, measured = (
            _bound_from(wa, wb, line, t, x, y) if t <= 0.5 else _bound_from(wb, wa, line, 1 - t, x, y)
        )
        row["loss"].append(loss)
        row["bound"].append(bound)
        row["bound_measured_output"].append(measured)
    return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _report(results: list[dict]) -> None:
    print(
        "\n| pair | alignment | mean loss on the line | bound (all terms) | bound with measured δ_L | B_a ≤ B_u |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        b_u = _mean(r["unaligned"]["bound"])
        for name in ("unaligned", "l2_preact", "correlation"):
            m = r[name]
            holds = "" if name == "unaligned" else ("yes" if _mean(m["bound"]) <= b_u else "no")
            print(
                f"| {r['pair']} | {name} | {_mean(m['loss']):.3f} | {_mean(m['bound']):.1f} | "
                f"{_mean(m['bound_measured_output']):.2f} | {holds} |"
            )


def _plot(row: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, style in (("unaligned", "C0"), ("l2_preact", "C1"), ("correlation", "C2")):
        r = row[name]
        axes[0].plot(r["t"], r["loss"], color=style, label=f"{name}: loss")
        axes[0].plot(
            r["t"], r["bound_measured_output"], color=style, ls="--", label=f"{name}: bound, measured δ_L"
        )
        axes[1].semilogy(r["t"], r["bound"], color=style, label=name)
    axes[0].set(xlabel="t", ylabel="training loss", title="loss and the last step of the bound")
    axes[1].set(xlabel="t", ylabel="bound (all terms)", title="Theorem 3.1's bound, layer by layer")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
