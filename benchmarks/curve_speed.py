"""A curve training step vs a plain training step of the same architecture (ResNet32, CPU).

Both are the steps modeconn itself takes: ``Trainer.training_step`` (what ``train_model`` runs)
on a ResNet32, and ``CurveOptimizer.training_step`` (what ``fit_curve(optimizer="sgd")`` runs)
on a one-bend Bezier curve between two ResNet32s: sample t, combine the control points,
forward and backward through ``functional_call``, SGD step on the bend. Same batch (128
CIFAR-sized inputs), same process; the two alternate in rounds (ABBA) so that load on the machine hits
both alike. Prints per-round medians, the overall medians and their ratio (target <= 1.15).

    python benchmarks/curve_speed.py [--rounds 7] [--steps 10] [--batch 128]
"""

from __future__ import annotations

import torch
from stepbench import interleaved, parser, timed_steps

import modeconn
from modeconn.training import CurveOptimizer, Trainer


def main() -> None:
    args = parser(__doc__.splitlines()[0], rounds=7, steps=10).parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    a = modeconn.create_model(args.model)
    b = modeconn.create_model(args.model)
    plain = Trainer(modeconn.create_model(args.model).train(), lr=0.01)
    curve = modeconn.Curve(a, b, family="bezier", num_bends=1).train()
    curved = CurveOptimizer(curve, lr=0.01)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    timed_steps(plain, x, y, 3), timed_steps(curved, x, y, 3)  # warm-up
    print(
        f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps per round\n"
    )
    print(f"{'round':>5}  {'plain step (ms)':>15}  {'curve step (ms)':>15}  {'ratio':>6}")

    def show(r: int, m: dict[str, float]) -> None:
        print(
            f"{r:>5}  {1000 * m['plain']:>15.1f}  {1000 * m['curve']:>15.1f}  {m['curve'] / m['plain']:>6.3f}"
        )

    m = interleaved({"plain": plain, "curve": curved}, x, y, args.rounds, args.steps, show)
    mp, mc = m["plain"], m["curve"]
    print(
        f"\nmedian  plain {1000 * mp:.1f} ms, curve {1000 * mc:.1f} ms, ratio curve/plain {mc / mp:.3f} (target <= 1.15)"
    )


if __name__ == "__main__":
    main()
