"""modeconn on large language models: time against the forward pass, and memory against the
models' own size (issue 29).

Two models of one architecture, random init from a config (seeds 0 and 1, float32): Llama-style
decoders at about 10M, 50M, 200M and 500M parameters and the TinyLlama-1.1B config
(``LlamaConfig``), and GPT-2 124M (``GPT2Config()``). For each model and each part:

* ``discover``: ``modeconn.discover(a, probe)`` (a probe of 2 sequences);
* ``weight_matching``: ``align(a, b, cost="weight_matching", spec=spec)``;
* ``correlation``: ``align(a, b, data, spec=spec)``;
* ``merge``: ``merge([a, b], cost="weight_matching", spec=spec, repair=False)``;
* ``curve``: ``Curve(a, b)`` and one ``fit_curve`` step (SGD with momentum) on one batch;
  ``curve_share``: the same with ``Curve(a, b, share=True)``.

Each part runs in a fresh process that first builds both models and runs their forward pass
over ``data`` (the reference time); then it resets the peak resident set size
(``/proc/self/clear_refs``) and runs the part. Printed: the part's time as a ratio to that
forward, and its peak RSS above the RSS before it, in W, the bytes of both models' weights. A
part that fails or runs past ``--timeout`` says so (``killed``: out of memory, most likely).

    python benchmarks/scale.py                         # 10M and 50M, every part
    python benchmarks/scale.py --models 10M,gpt2 --parts discover,curve --timeout 900
    python benchmarks/scale.py --models 10M --child 10M:curve   # one cell, in this process
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

SIZES = {  # hidden, intermediate, layers, heads, key/value heads, vocabulary
    "10M": (256, 704, 4, 4, 4, 8000),
    "50M": (512, 1408, 8, 8, 8, 16000),
    "200M": (1024, 2816, 12, 16, 16, 32000),
    "500M": (1536, 4096, 16, 16, 16, 32000),
    "tinyllama": (2048, 5632, 22, 32, 4, 32000),
}
PARTS = ("discover", "weight_matching", "correlation", "merge", "curve", "curve_share")
SEQUENCES, LENGTH, BATCH = 8, 256, 4


def build(name: str, seed: int):
    import torch
    import transformers as T

    torch.manual_seed(seed)
    if name == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(n_positions=LENGTH)).eval()
    hidden, inter, layers, heads, kv, vocab = SIZES[name]
    config = T.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=LENGTH,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return T.LlamaForCausalLM(config).eval()


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size in bytes, from /proc/self/status."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM := VmRSS
        f.write("5")


def child(name: str, part: str) -> dict:
    """One cell, in this process: the forward's time, the part's time and its peak RSS."""
    import torch

    import modeconn

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    a, b = build(name, 0), build(name, 1)
    vocab = a.config.vocab_size
    ids = torch.randint(0, vocab, (SEQUENCES, LENGTH), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": c} for c in ids.split(BATCH)]
    probe = {"input_ids": ids[:2]}
    weights = sum(p.numel() * p.element_size() for m in (a, b) for p in m.parameters())

    def forward() -> None:
        with torch.no_grad():
            for batch in data:
                a(**batch)
                b(**batch)

    forward()  # warm-up
    t0 = time.perf_counter()
    forward()
    forward_s = time.perf_counter() - t0
    needs_spec = part in ("weight_matching", "correlation", "merge")
    spec = modeconn.discover(a, probe) if needs_spec else None
    runs = {
        "discover": lambda: modeconn.discover(a, probe),
        "weight_matching": lambda: modeconn.align(a, b, cost="weight_matching", spec=spec),
        "correlation": lambda: modeconn.align(a, b, data, spec=spec, batch_size=BATCH),
        "merge": lambda: modeconn.merge([a, b], cost="weight_matching", spec=spec, repair=False),
        "curve": lambda: _curve_step(a, b, data[0]),
        "curve_share": lambda: _curve_step(a, b, data[0], share=True),
    }
    before, _ = _rss()
    _reset_peak()
    t0 = time.perf_counter()
    runs[part]()
    seconds = time.perf_counter() - t0
    _, peak = _rss()
    return {
        "model": name,
        "part": part,
        "params": sum(p.numel() for p in a.parameters()),
        "W_bytes": weights,
        "forward_s": forward_s,
        "seconds": seconds,
        "peak_over_W": (peak - before) / weights,
    }


def _curve_step(a, b, batch, share: bool = False) -> None:
    import modeconn

    curve = modeconn.Curve(a, b, share=share)
    step = [{"input_ids": batch["input_ids"], "labels": batch["input_ids"]}]  # next-token loss
    modeconn.fit_curve(curve, step, epochs=1, lr=0.01, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="10M,50M", help=f"comma-separated: {', '.join([*SIZES, 'gpt2'])}")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per cell (default: 1200)")
    p.add_argument("--json", help="also write every cell's figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child.split(":"))))
        return
    print(
        f"{SEQUENCES} sequences of {LENGTH} tokens (batch {BATCH}), float32, 2 threads; time as a ratio "
        "to the forward of both models over them, peak RSS above the RSS before the part in W (both "
        "models' weights)"
    )
    print(
        f"{'model':<10} {'params':>7} {'W (GB)':>7} {'forward':>8} | {'part':<16} {'time':>9} {'ratio':>7} {'peak':>7}"
    )
    cells = []
    for name in args.models.split(","):
        for part in args.parts.split(","):
            command = [sys.executable, __file__, "--child", f"{name}:{part}"]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"{name:<10} {'':>7} {'':>7} {'':>8} | {part:<16} timed out after {args.timeout:.0f} s",
                    flush=True,
                )
                cells.append({"model": name, "part": part, "error": f"timeout {args.timeout:.0f} s"})
                continue
            if done.returncode != 0:
                why = (
                    "killed (out of memory?)"
                    if done.returncode in (-9, 137)
                    else done.stderr.strip().splitlines()[-1:]
                )
                print(
                    f"{name:<10} {'':>7} {'':>7} {'':>8} | {part:<16} failed after {time.perf_counter() - t0:.0f} s: {why}",
                    flush=True,
                )
                cells.append({"model": name, "part": part, "error": str(why)})
                continue
            c = json.loads(done.stdout.strip().splitlines()[-1])
            cells.append(c)
            print(
                f"{name:<10} {c['params'] / 1e6:6.0f}M {c['W_bytes'] / 1e9:7.2f} {c['forward_s']:7.2f}s | "
                f"{part:<16} {c['seconds']:8.2f}s {c['seconds'] / c['forward_s']:6.1f}x {c['peak_over_W']:6.2f}W",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cells, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
