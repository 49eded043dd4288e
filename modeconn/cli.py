"""The ``modeconn`` command line: the workflow (``train``, ``align``, ``fit``, ``evaluate``,
``merge``, ``plot``, ``export``; see :mod:`modeconn.workflow`), and ``demo``, ``models``,
``plugins``, ``discover``.

Imports of torch and the rest happen inside the commands, so that ``--help`` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

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
        print(
            f"modeconn: error: no model matches {args.pattern!r} (`modeconn models` lists them all)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(names))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from modeconn.plugin import list_plugins

    plugins = list_plugins()
    kinds = [args.kind] if args.kind else list(plugins)
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


def _input_shape(model, text: str | None, name: str) -> tuple[int, ...]:
    """``--input-shape`` (C,H,W), else the model's default config (timm's ``input_size``; 3×224×224
    for torchvision's classifiers)."""
    from modeconn.errors import InvalidArgumentError

    if text:
        try:
            return tuple(int(v) for v in text.replace("x", ",").split(",") if v)
        except ValueError:
            raise InvalidArgumentError(f"--input-shape takes C,H,W (e.g. 3,224,224), got {text!r}") from None
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    if name.startswith("torchvision/"):
        return (3, 224, 224)
    raise InvalidArgumentError(f"cannot tell {name!r}'s input size: pass --input-shape C,H,W")


def _cmd_discover(args: argparse.Namespace) -> int:
    import torch

    from modeconn.data import DATASETS, digits
    from modeconn.registry import create_model, is_model
    from modeconn.resolve import build_model, model_spec
    from modeconn.symmetry import discover, permute

    torch.manual_seed(args.seed)
    own = is_model(args.model) and "/" not in args.model  # the paper's architectures, for 32×32 inputs
    if own and not args.input_shape:
        info = DATASETS["digits"]
        model = create_model(args.model, num_classes=info.num_classes, in_chans=info.in_chans).eval()
        test = digits(train=False)
        x = torch.stack([test[i][0] for i in range(args.batch)])
        source = f"{args.batch} embedded digits"
    else:
        model = build_model(model_spec(args.model)).eval()
        shape = _input_shape(model, args.input_shape, args.model)
        x = torch.randn(args.batch, *shape)
        source = f"{args.batch} random inputs of shape {tuple(shape)}"
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
        f"random permutation (seed {args.seed}) on {source}: {moved} tensors moved, "
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


_HELP = {
    "data": "a built-in dataset (digits, cifar10, cifar100, tinyimagenet) or an ImageFolder path "
    "(default for every step but train: the one the input runs were made on)",
    "data_root": "the folder that holds a built-in dataset's files",
    "schedule": "step, cosine, hold_then_linear (alias garipov) or constant",
    "num_samples": "training samples to align on",
    "bn_samples": "training samples BatchNorm statistics are recomputed on at each t",
    "test_samples": "evaluate on this many test samples (default: all)",
    "plane": "also loss and accuracy on an N x N grid of the plane through the curve's control points",
    "label": "the path's name in figures",
    "optimizer": "a curve optimizer plugin: sgd, pam or pgd (built in), or one `modeconn plugins` lists",
    "cost": "an alignment cost plugin: correlation, l2_preact or weight_matching (built in), or one "
    "`modeconn plugins` lists",
    "verify": "check a built-in dataset's checksums (--no-verify reads a rebuilt or converted copy of CIFAR)",
    "train_samples": "train on a random subset of this many training samples (default: all)",
    "epochs": "training epochs (more than a finished run's continue it)",
    "lr": "the learning rate of SGD",
    "momentum": "SGD's momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "batch_size": "samples per batch (under torchrun: over all ranks)",
    "sync_bn": "under torchrun on GPUs, BatchNorm normalizes with the statistics of all ranks' batches "
    "together (SyncBatchNorm), as one process does",
    "lr_step": "the step schedule's period in epochs",
    "lr_gamma": "the step schedule's factor per period",
    "seed": "the random seed (weights, data order, subsets)",
    "device": "cpu, cuda, cuda:N or mps (default: CUDA when present)",
    "family": "a curve family plugin: bezier, polychain or linear (built in), or one `modeconn plugins` lists",
    "num_bends": "the curve's bends (control points between the end points)",
    "num_points": "evenly spaced t to evaluate, both ends included (at least 2)",
    "method": "mean (MergeMany: each model aligned to the average of the others until no unit moves) "
    "or star (each aligned to the reference)",
    "weights": "one weight per run, comma-separated, e.g. 0.5,0.3,0.2 (normalized to sum to 1; "
    "default: equal)",
    "reference": "the run (numbered from 0) the others are first aligned to",
    "repair": "auto, yes or no: REPAIR the merged model's unit statistics (auto: whenever there is data, "
    "as there always is here)",
    "max_iterations": "MergeMany's most iterations",
    "merge.num_samples": "training samples to align on (and, with --repair, to measure REPAIR's statistics on)",
    "merge.bn_samples": "training samples the merged model's BatchNorm statistics are recomputed on",
    "merge.test_samples": "measure the merged model, the inputs and their plain average on this many test "
    "samples (default: all)",
    "t": "the point of a curve to export: a number from 0 (model A) to 1 (model B), or best (the best test "
    "accuracy of its evaluation); not for a train, align or merge run",
    "export.bn_samples": "training samples a point's BatchNorm statistics are recomputed on (default: the "
    "evaluation's, else 2048)",
}


def _option(text: str) -> tuple[str, object]:
    """``key=value``, the value read as a TOML scalar (number, true/false, string)."""
    from modeconn.errors import InvalidArgumentError
    from modeconn.runs import tomllib

    key, eq, value = text.partition("=")
    if not eq or not key:
        raise InvalidArgumentError(f"--option takes key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.replace("-", "_"), parsed


def _add_step_options(p: argparse.ArgumentParser, step: str, *, config: bool = True) -> None:
    from modeconn.workflow import DEFAULTS, setting_type

    for key, default in DEFAULTS[step].items():
        flag = "--" + key.replace("_", "-")
        help_text = _HELP.get(f"{step}.{key}", _HELP.get(key, ""))
        if default not in (None, {}, "") and "default:" not in help_text:
            help_text += f" (default: {default})"
        if key == "weights":  # a list: read by _weights, so that a mistake is one line
            p.add_argument(flag, metavar="W1,W2,...", default=argparse.SUPPRESS, help=help_text)
        elif key == "options":
            p.add_argument(
                "--option", dest="options", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                help="an option of the optimizer plugin, e.g. --option perm_epochs=2 (repeatable)",
            )  # fmt: skip
        elif isinstance(default, bool):
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            kind = setting_type(step, key) or str
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)
    if config:
        p.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            help="a config.toml (or run folder) to rerun; flags override it",
        )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars; print the summary line only")
    p.add_argument(
        "--json", dest="json_out", action="store_true", help="print the results as JSON, nothing else"
    )


_TOP_LEVEL = {"command", "model", "data", "train", "align", "fit", "evaluate", "merge"}


def _saved_config(step: str, path: str) -> dict:
    """The ``[step]`` table of a config.toml, every top-level key checked."""
    from modeconn.errors import InvalidArgumentError
    from modeconn.runs import read_config

    saved = read_config(path)
    unknown = sorted(set(saved) - _TOP_LEVEL)
    if unknown:
        raise InvalidArgumentError(
            f"--config {path!r}: unknown key(s) or table(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_TOP_LEVEL))}"
        )
    table = saved.get(step)
    if not isinstance(table, dict):
        held = saved.get("command")
        raise InvalidArgumentError(
            f"--config {path!r} holds no [{step}] table"
            + (f" (it is the config of a `{held}` run)" if held else "")
            + f": name the folder or config.toml of a `{step}` run"
        )
    return dict(table)


def _step_config(step: str, args: argparse.Namespace, positional: dict) -> dict:
    config: dict = {}
    if hasattr(args, "config"):
        config = _saved_config(step, args.config)
    given = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "out", "quiet", "json_out", "func", "command", "restart")
    }
    if "options" in given:
        given["options"] = {**config.get("options", {}), **dict(_option(o) for o in given["options"])}
    config.update({k: v for k, v in given.items() if k not in positional})
    config.update({k: v for k, v in positional.items() if v is not None})
    return config


def _run_step(step: str, args: argparse.Namespace, positional: dict) -> int:

    from modeconn import workflow
    from modeconn.errors import InvalidArgumentError

    if not getattr(args, "out", None):
        raise InvalidArgumentError(f"{step} needs --out FOLDER: the run folder it writes")
    config = _step_config(step, args, positional)
    quiet = args.quiet or args.json_out
    results = getattr(workflow, step)(config, args.out, quiet=quiet, restart=args.restart)
    return _print_results(args, results)


def _print_results(args: argparse.Namespace, results: dict) -> int:
    """What a step prints after its run: the results as JSON with --json, the summary line
    with --quiet (the step itself printed it otherwise); under torchrun, rank 0 speaks for all."""
    import json

    from modeconn import distributed  # torch: after the checks

    if not distributed.current().is_main:
        return 0
    if args.json_out:
        print(json.dumps(results))
    elif args.quiet:
        print(results["summary"])
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return _run_step("train", args, {})


def _cmd_align(args: argparse.Namespace) -> int:
    return _run_step("align", args, {"a": args.a, "b": args.b})


def _cmd_fit(args: argparse.Namespace) -> int:
    return _run_step("fit", args, {"a": args.a, "b": args.b})


def _cmd_evaluate(args: argparse.Namespace) -> int:
    return _run_step("evaluate", args, {"run": args.run, "line": getattr(args, "line", None)})


def _weights(text: str) -> list[float]:
    """``--weights 0.5,0.3,0.2``: one number per run."""
    from modeconn.errors import InvalidArgumentError

    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(
            f"--weights takes one number per run, separated by commas (e.g. 0.5,0.3,0.2), got {text!r}"
        ) from None


def _cmd_merge(args: argparse.Namespace) -> int:
    if hasattr(args, "weights"):
        args.weights = _weights(args.weights)
    return _run_step("merge", args, {"runs": args.runs or None})


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _bytes(text: str) -> int:
    """A size such as ``2GB``, ``500MiB`` or ``1000000`` (bytes), in bytes."""
    import re

    from modeconn.errors import InvalidArgumentError

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text, re.IGNORECASE)
    size = int(float(found[1]) * _SIZE_UNITS[(found[2] or "").lower()]) if found else 0
    if size <= 0:
        raise InvalidArgumentError(f"--shard-size takes a positive size such as 2GB or 500MiB, got {text!r}")
    return size


def _cmd_files(args: argparse.Namespace) -> int:
    import json

    import torch

    from modeconn.merging.files import align_files, merge_files

    size = _bytes(args.shard_size)
    if args.command == "align-files":
        result = align_files(args.spec, args.a, args.b, args.out, cost=args.cost, max_shard_bytes=size)
    else:
        result = merge_files(
            args.spec, args.a, args.b, args.out, weight=args.weight, align=not args.no_align,
            cost=args.cost, max_shard_bytes=size,
        )  # fmt: skip
    moved = sorted(g for g, p in result.perms.items() if not torch.equal(p, torch.arange(len(p))))
    if args.json_out:
        print(json.dumps({"path": str(result.path), "groups_moved": len(moved), "groups": len(result.perms),
                          "notes": result.notes}))  # fmt: skip
        return 0
    what = "B aligned to A" if args.command == "align-files" else f"merge (B's share {args.weight})"
    print(f"{what} written to {result.path}: {len(moved)}/{len(result.perms)} groups of B's units moved")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _files_parser(sub, command: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(command, help=help_text)
    p.add_argument(
        "spec", help="the models' permutation spec as JSON (`modeconn discover MODEL --json FILE`)"
    )
    p.add_argument("a", help="model A: a .safetensors file or a folder of shards")
    p.add_argument("b", help="model B, likewise (one architecture with A)")
    p.add_argument("--out", required=True, help="the new folder to write the checkpoint into, as shards")
    p.add_argument(
        "--cost",
        default="weight_matching",
        help="a data-free cost plugin: weight_matching (built in) or one `modeconn plugins` lists "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--shard-size",
        default="2GB",
        help="the largest shard to write, e.g. 2GB or 500MiB (default: %(default)s)",
    )
    p.add_argument(
        "--json", dest="json_out", action="store_true", help="print the results as JSON, nothing else"
    )
    p.set_defaults(func=_cmd_files)
    return p


def _cmd_export(args: argparse.Namespace) -> int:

    from modeconn import workflow
    from modeconn.errors import InvalidArgumentError

    if not args.out:
        raise InvalidArgumentError("export needs --out PATH: the .safetensors file it writes")
    config = {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "json_out", "func", "command")}
    config.pop("force")
    results = workflow.export(config, args.out, quiet=args.quiet or args.json_out, force=args.force)
    return _print_results(args, results)


def _cmd_plot(args: argparse.Namespace) -> int:
    import json

    from modeconn import workflow
    from modeconn.errors import InvalidArgumentError

    labels = {}
    for text in args.label or []:
        run, eq, name = text.rpartition("=")
        if not eq or not run:
            raise InvalidArgumentError(f"--label takes RUN=NAME, got {text!r}")
        labels[run] = name
    results = workflow.plot(
        args.runs,
        args.out,
        quiet=args.quiet or args.json_out,
        title=args.title,
        labels=labels,
        restart=args.restart,
    )
    if args.json_out:
        print(json.dumps(results))
    return 0


_STEPS = {
    "train": _cmd_train,
    "align": _cmd_align,
    "fit": _cmd_fit,
    "evaluate": _cmd_evaluate,
    "merge": _cmd_merge,
}


def _step_parser(
    sub: Any, step: str, help_text: str, *positionals: tuple[str, str]
) -> argparse.ArgumentParser:
    """The parser of a workflow step: its positionals, ``--out``, its settings, the output modes."""
    p = sub.add_parser(step, help=help_text)
    for name, text in positionals:
        p.add_argument(name, nargs="?", help=text)
    p.add_argument("--out", help="the run folder (required)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="when --out holds a run with other settings, keep its contents aside (in OUT.restart-N) "
        "and start over instead of refusing",
    )
    _add_step_options(p, step)
    _output_options(p)
    p.set_defaults(func=_STEPS[step])
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modeconn",
        description="Mode connectivity between neural networks, up to their permutation symmetry. The "
        "workflow: train two end points, align B to A, fit a curve, evaluate it, plot it; each step "
        "writes a run folder that the next one reads.",
    )
    parser.add_argument("--version", action="version", version=f"modeconn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models (fnmatch PATTERN, e.g. 'res*' or 'timm/vit_*')")
    p.add_argument("pattern", nargs="?", default=None, help="an fnmatch pattern of names (default: all)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("plugins", help="list installed plugins by kind, with where each comes from")
    p.add_argument(
        "--kind", choices=["cost", "curve", "optimizer", "rule"], help="list every entry of one kind"
    )
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser(
        "discover",
        help="find a model's permutation groups and check that a random permutation keeps its function",
    )
    p.add_argument(
        "model",
        help="a registered model (resnet32, timm/resnet18, torchvision/resnet18), package.module:callable, or a run folder",
    )
    p.add_argument(
        "--input-shape",
        help="C,H,W of random inputs (default: the model's config; the paper's models: embedded digits)",
    )
    p.add_argument("--batch", type=int, default=64, help="how many inputs to compare on")
    p.add_argument("--seed", type=int, default=0, help="the seed of the random permutation (default: 0)")
    p.add_argument("--strict", action="store_true", help="fail on ops without a permutation rule")
    p.add_argument("--json", help="also write the spec as JSON to this file")
    p.set_defaults(func=_cmd_discover)
    model_a = "model A: a run folder, a checkpoint in one, or a registry name"
    train = _step_parser(sub, "train", "train an end point into a run folder (resumes when interrupted)")
    train.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="(required) a registry name (modeconn models) or package.module:callable",
    )
    _step_parser(
        sub, "align", "permute B's units to match A's; writes the aligned B and the permutation",
        ("a", model_a), ("b", "model B, likewise"),
    )  # fmt: skip
    _step_parser(
        sub, "fit", "fit a curve between A and B with an optimizer plugin (resumes when interrupted)",
        ("a", model_a), ("b", "model B (e.g. the run folder of `modeconn align`)"),
    )  # fmt: skip
    evaluate = _step_parser(
        sub, "evaluate", "loss and accuracy along a fitted curve or a straight line, BatchNorm recomputed "
        "(or of the one model of a merge)",
        ("run", "the run folder of `modeconn fit` (or of `modeconn merge`)"),
    )  # fmt: skip
    evaluate.add_argument(
        "--line", nargs=2, metavar=("A", "B"), default=argparse.SUPPRESS,
        help="evaluate the straight line from A to B instead",
    )  # fmt: skip
    merge = _step_parser(
        sub, "merge", "merge the models of two or more train or align runs into one (aligned, averaged, "
        "repaired) and measure it",
    )  # fmt: skip
    merge.add_argument(
        "runs", nargs="*", metavar="RUN",
        help="the run folders of `modeconn train`, `align` or `merge` (two or more, one architecture and dataset)",
    )  # fmt: skip
    p = sub.add_parser(
        "export",
        help="write the model of a run folder (or a point t of a curve) to a .safetensors file, with a "
        ".json of what rebuilds it",
    )
    p.add_argument(
        "run",
        nargs="?",
        help="a train, align or merge run folder, a fit run folder, or the evaluate run folder of a curve",
    )
    p.add_argument(
        "--out",
        help="(required) the .safetensors file to write (NAME.json beside it); a folder for a Hugging "
        "Face model",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    _add_step_options(p, "export", config=False)
    _output_options(p)
    p.set_defaults(func=_cmd_export)
    _files_parser(
        sub, "align-files", "write checkpoint B with its units matched to checkpoint A's, reading both from "
        "safetensors tensor by tensor (models that do not fit in memory twice)",
    )  # fmt: skip
    p = _files_parser(
        sub, "merge-files", "write the average of checkpoints A and B, B's units matched to A's first, reading "
        "both from safetensors tensor by tensor",
    )  # fmt: skip
    p.add_argument(
        "--weight", type=float, default=0.5, help="B's share of the merge, in [0, 1] (default: 0.5)"
    )
    p.add_argument("--no-align", action="store_true", help="the plain average: B's units as they are")
    p = sub.add_parser("plot", help="accuracy and loss along t for saved evaluations (no recomputing)")
    p.add_argument("runs", nargs="+", help="run folders of `modeconn evaluate`")
    p.add_argument(
        "--out",
        required=True,
        help="a run folder (paths.png/.pdf, plane.png/.pdf, config, results), or one figure file "
        "(.png, .pdf or .svg; the planes beside it as NAME-plane.SUFFIX)",
    )
    p.add_argument("--title", help="the figure's title (default: the model and dataset the runs name)")
    p.add_argument(
        "--label",
        action="append",
        metavar="RUN=NAME",
        help="the name of one run's path in the legend (default: from the runs, e.g. 'aligned line'; repeatable)",
    )
    p.add_argument("--restart", action="store_true", help="keep an earlier plot folder's contents aside")
    _output_options(p)
    p.set_defaults(func=_cmd_plot)
    p = sub.add_parser(
        "demo",
        help="offline, on the embedded digits: train two models, align them, fit unaligned and aligned "
        "curves, print a table and write plots",
    )
    p.add_argument("--out", default="modeconn-demo", help="output folder (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="the random seed: end points, curves, data subsets (default: 0)"
    )
    p.add_argument("--epochs", type=int, default=10, help="end-point training epochs (default: 10)")
    p.add_argument("--curve-epochs", type=int, default=5, help="curve training epochs (default: 5)")
    p.add_argument("--points", type=int, default=11, help="evenly spaced t at which paths are evaluated")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"modeconn: warning: {message}", file=sys.stderr)  # one line, not the source location


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    from modeconn.errors import ModeconnError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
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
