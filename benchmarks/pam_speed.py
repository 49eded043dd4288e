"""PAM's two steps vs an ordinary curve-fitting step (ResNet32, batch 128, CPU).

All three are the steps ``fit_curve`` takes, each on its own one-bend Bezier curve between the
same two ResNet32s: ``CurveOptimizer.training_step`` (``optimizer="sgd"``), and
``PAM.training_step`` in a permutation epoch (forward and backward through the relaxed
permutation of every permutable group, SGD, proximal pull and the paper's 20-round projection
onto the doubly stochastic matrices) and in a curve epoch (the ordinary step plus the proximal
pull on the bends). Same batch, same process; the three alternate in rounds (ABBA) so that load on the
machine hits all alike. Prints per-round medians, overall medians and the ratios (target: the
permutation step <= 1.25 x the ordinary step).

    python benchmarks/pam_speed.py [--rounds 7] [--steps 10] [--batch 128]
"""

from __future__ import annotations

import torch
from modeconn.plugins.pam import PAM
from stepbench import interleaved, parser, timed_steps

import modeconn
from modeconn.training import CurveOptimizer
from modeconn.training.loop import as_loader


def pam_in(phase: str, a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> PAM:
    """A PAM trainer as fit_curve builds it, set up and in its first ``phase`` epoch."""
    pam = PAM(modeconn.Curve(a, b).train(), lr=0.01, perm_epochs=1, curve_epochs=1, score_batches=1)
    pam.on_fit_start(as_loader((x, y), len(x)), 2)
    pam.on_epoch_start(1 if phase == "perm" else 2)
    return pam


def main() -> None:
    args = parser(__doc__.splitlines()[0], rounds=7, steps=10).parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    a, b = modeconn.create_model(args.model), modeconn.create_model(args.model)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    kinds = {
        "ordinary": CurveOptimizer(modeconn.Curve(a, b).train(), lr=0.01),
        "perm": pam_in("perm", a, b, x, y),
        "curve": pam_in("curve", a, b, x, y),
    }
    groups = len(kinds["perm"].matrices)
    for trainer in kinds.values():
        timed_steps(trainer, x, y, 3)  # warm-up
    print(
        f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps per round, "
        f"{groups} relaxed permutations\n"
    )
    print(
        f"{'round':>5}  {'ordinary (ms)':>13}  {'PAM perm (ms)':>13}  {'PAM curve (ms)':>14}  {'perm/ord':>8}  {'curve/ord':>9}"
    )

    def show(r: int, medians: dict[str, float]) -> None:
        o = medians["ordinary"]
        print(
            f"{r:>5}  {1000 * o:>13.1f}  {1000 * medians['perm']:>13.1f}  {1000 * medians['curve']:>14.1f}  "
            f"{medians['perm'] / o:>8.3f}  {medians['curve'] / o:>9.3f}"
        )

    m = interleaved(kinds, x, y, args.rounds, args.steps, show)
    print(
        f"\nmedian  ordinary {1000 * m['ordinary']:.1f} ms, PAM permutation step {1000 * m['perm']:.1f} ms "
        f"(ratio {m['perm'] / m['ordinary']:.3f}, target <= 1.25), PAM curve step {1000 * m['curve']:.1f} ms "
        f"(ratio {m['curve'] / m['ordinary']:.3f})"
    )


if __name__ == "__main__":
    main()
