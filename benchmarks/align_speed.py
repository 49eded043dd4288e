"""align() vs one eval forward pass of both models, and align's peak memory, for ResNet32.

For each size (2,000 and 10,000 CIFAR-sized inputs) a fresh subprocess loads the same data
(the CIFAR-10 training set from ../shared/data when present, else the same amount of synthetic
uint8 images), builds two ResNet32s, and alternates, 5 times each:
  - forward: one eval forward pass of model A and of model B over the inputs;
  - align:   modeconn.align(A, B, inputs) (tracing, discovery, statistics, assignment, permute).
It prints medians, their ratio (target <= 1.3), the median of the ratios of each back-to-back
pair, and the subprocess's peak RSS (target: the peak at 10,000 within 10% of the peak at 2,000).

    python benchmarks/align_speed.py
"""

from __future__ import annotations

import json
import pickle
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py"
SIZES = (2000, 10000)
REPEATS = 5
BATCH = 256


def load_images() -> tuple[np.ndarray, str]:
    if (CIFAR / "data_batch_1").is_file():
        arrays = []
        for i in range(1, 6):
            with open(CIFAR / f"data_batch_{i}", "rb") as f:
                arrays.append(pickle.load(f, encoding="latin1")["data"])
        return np.concatenate(arrays).reshape(-1, 3, 32, 32), "CIFAR-10 train (../shared/data)"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(50000, 3, 32, 32), dtype=np.uint8), "synthetic uint8 images"


def child(n: int) -> None:
    import torch

    import modeconn

    torch.set_num_threads(2)
    images, source = load_images()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)

    def batches():  # normalized float batches, made on the fly: the inputs never sit in memory at once
        for i in range(0, n, BATCH):
            yield (torch.from_numpy(images[i : min(i + BATCH, n)]).float() / 255 - mean) / std

    torch.manual_seed(0)
    a = modeconn.create_model("resnet32").eval()
    torch.manual_seed(1)
    b = modeconn.create_model("resnet32").eval()
    # BatchNorm statistics of the data, as trained models would have
    modeconn.update_bn(a, batches(), num_samples=1024)
    modeconn.update_bn(b, batches(), num_samples=1024)
    a.eval(), b.eval()

    def forward() -> None:
        with torch.no_grad():
            for x in batches():
                a(x)
                b(x)

    forward()  # warm-up
    t_fwd, t_align = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        forward()
        t_fwd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = modeconn.align(a, b, batches(), batch_size=BATCH)
        t_align.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb, ma = result.signature.mean()
    print(
        json.dumps(
            {
                "n": n,
                "source": source,
                "forward": statistics.median(t_fwd),
                "align": statistics.median(t_align),
                "forward_all": t_fwd,
                "align_all": t_align,
                "peak_mb": peak_mb,
                "corr_before": mb,
                "corr_after": ma,
            }
        )
    )


def main() -> None:
    rows = []
    for n in SIZES:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"ResNet32, batch {BATCH}, inputs: {rows[0]['source']}; medians of {REPEATS} runs")
    print(
        f"{'inputs':>7} | {'2x eval forward (s)':>19} | {'align (s)':>9} | {'ratio':>5} | {'peak RSS (MB)':>13} | corr before -> after"
    )
    for r in rows:
        print(
            f"{r['n']:>7} | {r['forward']:>19.2f} | {r['align']:>9.2f} | {r['align'] / r['forward']:>5.2f} | "
            f"{r['peak_mb']:>13.0f} | {r['corr_before']:.3f} -> {r['corr_after']:.3f}"
        )
    small, large = rows[0], rows[-1]
    print(
        f"peak memory at {large['n']} / at {small['n']}: {large['peak_mb'] / small['peak_mb']:.3f} (target <= 1.10)"
    )
    ratios = ", ".join(f"{r['align'] / r['forward']:.2f}" for r in rows)
    print(f"time ratio align / forward: {ratios} (target <= 1.3)")
    # each align runs right after its forward pass: the ratio within a pair is less exposed to
    # load that drifts over minutes on a shared machine than the ratio of the two medians
    for r in rows:
        paired = sorted(al / fw for fw, al in zip(r["forward_all"], r["align_all"]))
        print(
            f"paired ratios at {r['n']}: median {statistics.median(paired):.2f} "
            f"(all: {', '.join(f'{x:.2f}' for x in paired)})"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
