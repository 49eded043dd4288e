"""discover and align on Hugging Face transformers, against one eval forward pass of both models.

Two tiny models per family (random init from a config, seeds 0 and 1): BERT for sequence
classification and Llama for causal LM (grouped-query attention, rotary embeddings), hidden
size 128, 4 layers, 4 heads, on 512 random token sequences of 64, batch 64, 2 threads.
Everything runs in one process and the timed parts are interleaved, ``REPEATS`` times:
the forward pass of both models over the data, ``discover`` (capture, both modes), and
``align`` with correlation (spec given) and weight matching. Medians and ratios are printed.

    python benchmarks/transformers_speed.py
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

import modeconn

REPEATS = 3
SEQUENCES, LENGTH, BATCH = 512, 64, 64


def build(family: str, seed: int) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(seed)
    size = dict(vocab_size=1000, hidden_size=128, intermediate_size=512, num_hidden_layers=4)
    size.update(num_attention_heads=4, max_position_embeddings=LENGTH)
    if family == "bert":
        return T.BertForSequenceClassification(T.BertConfig(**size)).eval()
    config = T.LlamaConfig(**size, num_key_value_heads=2, bos_token_id=0, eos_token_id=0)
    return T.LlamaForCausalLM(config).eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(family: str, data: list[dict], probe: dict) -> None:
    """One family's row: medians of the interleaved runs and their ratios to the forward pass."""
    a, b = build(family, 0), build(family, 1)
    spec = modeconn.discover(a, probe)

    def forward() -> None:
        with torch.no_grad():
            for batch in data:
                a(**batch)
                b(**batch)

    runs = {
        "forward": forward,
        "discover": lambda: modeconn.discover(a, probe),
        "correlation": lambda: modeconn.align(a, b, data, spec=spec, batch_size=BATCH),
        "weight_matching": lambda: modeconn.align(a, b, cost="weight_matching", spec=spec),
    }
    forward()  # warm-up
    modeconn.align(a, b, data[:1], spec=spec)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(REPEATS):
        for k, run in runs.items():
            times[k].append(timed(run))
    med = {k: statistics.median(v) for k, v in times.items()}
    f = med["forward"]
    cells = " | ".join(
        f"{med[k]:6.2f} s {med[k] / f:5.2f}x" for k in ("discover", "correlation", "weight_matching")
    )
    p, h = spec.units()
    print(f"{family:<8} {f:11.2f} | {cells} | {p}/{h} ({spec.capture})", flush=True)


def main() -> None:
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (SEQUENCES, LENGTH), generator=g)
    data = [{"input_ids": c, "attention_mask": torch.ones_like(c)} for c in ids.split(BATCH)]
    probe = {k: v[:2] for k, v in data[0].items()}
    print(f"{SEQUENCES} sequences of {LENGTH} tokens, batch {BATCH}, medians of {REPEATS}, 2 threads")
    header = f"{'model':<8} {'forward (s)':>11} | {'discover':>14} | {'align corr.':>14} | {'weight m.':>14}"
    print(f"{header} | permutable")
    for family in ("bert", "llama"):
        measure(family, data, probe)


if __name__ == "__main__":
    main()
