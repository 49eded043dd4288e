"""A robust curve-fitting step vs a robust (PGD-trained) plain-model step (ResNet32, CPU).

Both are the steps modeconn takes: ``Trainer.training_step`` with an adversary (what
``train_model(..., adversary=PGD.preset("train"))`` runs: 5 PGD steps against the model, then
the loss on the examples) and ``PGDCurve.training_step`` (``fit_curve(optimizer="pgd")``: sample
t, 5 PGD steps against r(t), the loss at the same t, SGD on the bend of a one-bend Bezier
curve). Same batch (128 CIFAR-sized inputs in [0, 1]), same process, alternating rounds (ABBA).
Prints per-round medians, overall medians and the ratio (target <= 1.10: the attack dominates
both, so the curve must add almost nothing).

    python benchmarks/robust_speed.py [--rounds 5] [--steps 4] [--batch 128]
"""

from __future__ import annotations

import torch
from modeconn.plugins.pgd import PGDCurve
from stepbench import interleaved, parser, timed_steps

import modeconn
from modeconn.attacks import PGD
from modeconn.training import Trainer


def main() -> None:
    args = parser(__doc__.splitlines()[0], rounds=5, steps=4).parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    attack = PGD.preset("train")
    a, b = modeconn.create_model(args.model), modeconn.create_model(args.model)
    plain = Trainer(modeconn.create_model(args.model).train(), lr=0.01, adversary=attack)
    curved = PGDCurve(modeconn.Curve(a, b).train(), lr=0.01, attack=attack)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    timed_steps(plain, x, y, 2), timed_steps(curved, x, y, 2)  # warm-up
    print(f"{args.model}, batch {args.batch}, {attack.describe()}, {torch.get_num_threads()} threads\n")
    print(f"{'round':>5}  {'robust plain (ms)':>17}  {'robust curve (ms)':>17}  {'ratio':>6}")

    def show(r: int, m: dict[str, float]) -> None:
        print(
            f"{r:>5}  {1000 * m['plain']:>17.1f}  {1000 * m['curve']:>17.1f}  {m['curve'] / m['plain']:>6.3f}"
        )

    m = interleaved({"plain": plain, "curve": curved}, x, y, args.rounds, args.steps, show)
    mp, mc = m["plain"], m["curve"]
    print(
        f"\nmedian  robust plain {1000 * mp:.1f} ms, robust curve {1000 * mc:.1f} ms, "
        f"ratio curve/plain {mc / mp:.3f} (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
