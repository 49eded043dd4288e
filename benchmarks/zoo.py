"""Sweep timm's registry: smallest variant of every family, discover + permute + compare.

For each model: number of groups, permutable groups, permutable hidden units as a share of
all hidden units, outcome (ok / fixed-with-reason / failed, with the error) and the seconds
spent in trace + discover. Equivalence: outputs of the model and of a randomly permuted copy
(float64, eval mode and train mode with dropout and drop-path off) must agree to
1e-4 x max |logit|, and every permutable group must move some tensor. "fixed" names the op
without a rule that fixes the most hidden units (PermutationSpec.fixed_ops).

    python benchmarks/zoo.py                    # all families, 20-minute budget
    python benchmarks/zoo.py --filter 'res*' --budget 120 --out zoo.md
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import re
import sys
import time
import traceback
import warnings

import timm
import torch

from modeconn import discover, permute

warnings.filterwarnings("ignore")


def family(name: str) -> str:
    return re.sub(r"\d.*$", "", name.split("_")[0]) or name


def smallest_per_family(names: list[str]) -> dict[str, str]:
    """The variant with the fewest parameters in each family (counted on the meta device)."""
    best: dict[str, tuple[int, str]] = {}
    for name in names:
        try:
            with torch.device("meta"):
                m = timm.create_model(name)
            n = sum(p.numel() for p in m.parameters())
        except Exception:
            continue
        fam = family(name)
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return {fam: name for fam, (_, name) in sorted(best.items())}


def randomize(model: torch.nn.Module) -> None:
    """Non-trivial weights and BatchNorm statistics, so that a wrong permutation shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1 or float(p.abs().max()) == 0:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)


def _train_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode (batch statistics) with its random parts off: dropout and drop-path masks
    fall on different units in a permuted model."""
    from timm.layers import DropPath

    model.train()
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.dropout._DropoutNd, DropPath)):
            m.eval()
    return model


def _create_without_randomness(name: str) -> torch.nn.Module:
    """The model with dropout and drop-path rates at zero. Some families take only one of
    the two keywords, and some apply ``F.dropout`` in ``forward`` (ghostnet's head), which
    ``_train_mode`` cannot switch off afterwards, so each keyword is tried on its own."""
    for kwargs in ({"drop_rate": 0.0, "drop_path_rate": 0.0}, {"drop_rate": 0.0}, {"drop_path_rate": 0.0}):
        try:
            return timm.create_model(name, **kwargs)
        except TypeError:
            continue
    return timm.create_model(name)


def check(name: str) -> dict:
    row = {
        "model": name,
        "groups": "",
        "permutable": "",
        "units": "",
        "outcome": "",
        "seconds": "",
        "detail": "",
    }
    try:
        model = _create_without_randomness(name)
        model = model.double().eval()
        randomize(model)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(2, *size, dtype=torch.double)
        t0 = time.perf_counter()
        spec = discover(model, x)
        row["seconds"] = f"{time.perf_counter() - t0:.2f}"
        pu, au = spec.units()
        row.update(groups=len(spec), permutable=len(spec.permutable), units=f"{100 * pu / max(au, 1):.1f}%")
        perms = spec.random_permutation(1)
        permuted = permute(model, spec, perms)
        with torch.no_grad():
            y, yp = model(x), permuted(x)
            err = float((y - yp).abs().max() / y.abs().max().clamp_min(1e-30))
            a, b = _train_mode(copy.deepcopy(model)), _train_mode(copy.deepcopy(permuted))
            yt, ytp = a(x), b(x)
            err = max(err, float((yt - ytp).abs().max() / yt.abs().max().clamp_min(1e-30)))
        before, after = model.state_dict(), permuted.state_dict()
        still = [
            g.name
            for g in spec.permutable
            if not torch.equal(perms[g.name], torch.arange(g.size))  # a small group may draw the identity
            and all(torch.equal(before[s.tensor], after[s.tensor]) for s in g.slices)
        ]
        ops = spec.fixed_ops()
        unsupported = [f"{op} ({n} units)" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])]
        if err > 1e-4 or still:
            row["outcome"] = "failed"
            row["detail"] = f"rel. error {err:.1e}" + (
                f"; groups that did not move: {still[:3]}" if still else ""
            )
        elif unsupported:
            row["outcome"] = "fixed"
            row["detail"] = "; ".join(unsupported[:3])[:160]
        elif not spec.permutable:  # equivalence holds trivially: nothing was permuted
            row["outcome"] = "fixed"
            reasons = sorted({g.reason for g in spec.groups.values() if g.reason})
            row["detail"] = (
                ("nothing permutable; " + "; ".join(reasons[:2]))[:160] if reasons else "no groups found"
            )
        else:
            row["outcome"] = "ok"
            row["detail"] = f"rel. error {err:.1e}"
    except Exception as e:  # the sweep reports every failure, whatever it is
        row["outcome"] = "failed"
        row["detail"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if "-v" in sys.argv:
            traceback.print_exc()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*", help="fnmatch pattern on timm model names")
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds for the whole sweep")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument(
        "--after", help="resume an interrupted sweep: skip models up to this one (alphabetical)"
    )
    parser.add_argument("-v", action="store_true", help="print tracebacks")
    args = parser.parse_args()

    names = [n for n in timm.list_models() if fnmatch.fnmatch(n, args.filter)]
    chosen = smallest_per_family(names)
    if args.after:
        chosen = {fam: name for fam, name in chosen.items() if name > args.after}
    print(f"{len(chosen)} families from {len(names)} timm models", flush=True)

    # speed target: trace + discover of timm/resnet50 (float32, 224x224)
    r50 = timm.create_model("resnet50").eval()
    x = torch.randn(2, 3, 224, 224)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        discover(r50, x)
        times.append(time.perf_counter() - t0)
    print(
        f"trace + discover timm/resnet50: median {sorted(times)[1]:.2f}s over 3 runs (target < 2 s)",
        flush=True,
    )

    start = time.perf_counter()
    rows = []
    header = "| model | groups | permutable | units permutable | outcome | s | detail |"
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    for name in chosen.values():
        if time.perf_counter() - start > args.budget:
            print(f"(budget of {args.budget:.0f}s reached; {len(chosen) - len(rows)} families not run)")
            break
        row = check(name)
        rows.append(row)
        print(
            "| "
            + " | ".join(
                str(row[k])
                for k in ("model", "groups", "permutable", "units", "outcome", "seconds", "detail")
            )
            + " |",
            flush=True,
        )

    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("ok", "fixed", "failed")}
    shares = [float(r["units"].rstrip("%")) for r in rows if r["units"] and r["outcome"] != "failed"]
    median = sorted(shares)[len(shares) // 2] if shares else float("nan")
    above = sum(s > 90 for s in shares)
    summary = (
        f"\n{len(rows)} models: {counts['ok']} ok, {counts['fixed']} fixed-with-reason, {counts['failed']} failed; "
        f"median permutable share {median:.1f}%, {above}/{len(shares)} above 90%"
    )
    print(summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n|---|---|---|---|---|---|---|\n")
            for row in rows:
                f.write(
                    "| "
                    + " | ".join(
                        str(row[k])
                        for k in ("model", "groups", "permutable", "units", "outcome", "seconds", "detail")
                    )
                    + " |\n"
                )
            f.write(summary + "\n")


if __name__ == "__main__":
    main()
