"""The ``modeconn`` command line: ``demo``, ``models``, ``plugins``, ``discover``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modeconn")
    except PackageNotFoundError:  # a source checkout that is not installed
        return "(not installed)"


def _cmd_models(args: argparse.Namespace) -> int:
    from modeconn.registry import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from modeconn.plugin_manager import KINDS, list_plugins

    plugins = list_plugins()
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        entries = plugins[kind]
        print(f"{kind}s ({len(entries)}):")
        by_plugin: dict[tuple[str, str], list] = {}
        for e in entries:
            by_plugin.setdefault((e.plugin, e.source), []).append(e)
        for (plugin, source), group in by_plugin.items():
            if args.kind:  # one per line, for scripts
                for e in group:
                    print(f"  {e.name:<50} {plugin}")
                continue
            names = [e.name for e in group]
            shown = ", ".join(names[:8]) + (
                f", ... ({len(names) - 8} more; `--kind {kind}` lists them)" if len(names) > 8 else ""
            )
            print(f"  from {plugin!r} [{source}]: {shown}")
    return 0


def _cmd_discover(args: argparse.Namespace) -> int:
    import torch

    from modeconn.data import DATASETS, digits
    from modeconn.registry import create_model
    from modeconn.symmetry import discover, permute

    torch.manual_seed(args.seed)
    info = DATASETS["digits"]
    model = create_model(args.model, num_classes=info.num_classes, in_chans=info.in_chans).eval()
    test = digits(train=False)
    x = torch.stack([test[i][0] for i in range(args.batch)])
    spec = discover(model, x, strict=args.strict)
    print(spec)
    if args.json:
        with open(args.json, "w") as f:
            f.write(spec.to_json())
        print(f"spec written to {args.json}")
    permuted = permute(model, spec, spec.random_permutation(args.seed))
    with torch.no_grad():
        y, y_perm = model(x), permuted(x)
    moved = sum(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), permuted.state_dict().values())
    )
    diff = float((y - y_perm).abs().max() / y.abs().max())
    print(
        f"random permutation (seed {args.seed}) on {args.batch} embedded digits: {moved} tensors moved, "
        f"max |logit difference| / max |logit| = {diff:.2e}"
    )
    return 0 if diff < 1e-4 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from modeconn.demo import DemoSettings, run_demo

    settings = DemoSettings(
        seed=args.seed, epochs=args.epochs, curve_epochs=args.curve_epochs, num_points=args.points
    )
    result = run_demo(args.out, settings, progress=not args.quiet)
    print(result.table())
    print(
        f"\nplots, reports and models written to {args.out}/ "
        f"(curves.png, correlation_signature.png, results.json) in {result.seconds:.0f}s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modeconn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modeconn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models (fnmatch PATTERN, e.g. 'res*' or 'timm/vit_*')")
    p.add_argument("pattern", nargs="?", default=None)
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("plugins", help="list installed plugins by kind, with where each comes from")
    p.add_argument(
        "--kind", choices=["cost", "curve", "optimizer", "rule"], help="list every entry of one kind"
    )
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser(
        "discover",
        help="find a model's permutation groups and check that a random permutation keeps its "
        "function, on the embedded digits",
    )
    p.add_argument("model", help="a registered model name, e.g. resnet32 or timm/resnet18")
    p.add_argument("--batch", type=int, default=64, help="how many embedded digits to compare on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on ops without a permutation rule")
    p.add_argument("--json", help="also write the spec as JSON to this file")
    p.set_defaults(func=_cmd_discover)
    p = sub.add_parser(
        "demo",
        help="offline, on the embedded digits: train two models, align them, fit unaligned and aligned "
        "curves, print a table and write plots",
    )
    p.add_argument("--out", default="modeconn-demo", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10, help="end-point training epochs")
    p.add_argument("--curve-epochs", type=int, default=5)
    p.add_argument("--points", type=int, default=11, help="evenly spaced t at which paths are evaluated")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from modeconn.errors import ModeconnError

    try:
        return args.func(args)
    except ModeconnError as e:  # what the user passed: one line, no traceback
        print(f"modeconn: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modeconn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `modeconn models 'timm/*' | head`: the reader left
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
