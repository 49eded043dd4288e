"""Weight matching's memory (issue 29), W being both models' weight bytes: ``match_weights``
takes at most 0.3 W of peak RSS beyond the two models (one group's working set: a float32
copy of one model would be 0.5 W, a float64 one 1.0 W), and ``align(a, b,
cost="weight_matching")`` at most 0.6 W (the aligned copy, 0.5 W, and that working set, which
is freed before the copy is made). Measured in a subprocess, on a model large enough for a
whole-model copy to show; not timed."""

from __future__ import annotations

import json
import subprocess
import sys

MATCH_LIMIT = 0.3
ALIGN_LIMIT = 0.6
SLACK = 16 << 20
"""A fixed allowance for what the allocator and torch keep beyond the working set (16 MiB,
0.11 W here); a float32 copy of one model is 0.5 W (72 MiB)."""

SCRIPT = r"""
import gc, json, resource
import torch, torch.nn as nn
import modeconn

torch.set_num_threads(1)


def net(seed):  # 8 convolutions 512 -> 512: 75 MB of weights, group matrices of 512 x 512
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 512, 3, padding=1), nn.ReLU()]
    for _ in range(8):
        layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)).eval()


spec = modeconn.discover(net(0), torch.randn(2, 3, 4, 4))
gc.collect()
a, b = net(0), net(1)
weights = sum(t.numel() * t.element_size() for m in (a, b) for t in m.state_dict().values())
gc.collect()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
perms = modeconn.alignment.match_weights(spec, a.state_dict(), b.state_dict())
matched = peak()
result = modeconn.align(a, b, cost="weight_matching", spec=spec)
aligned = peak()
moved = sum(not torch.equal(p, torch.arange(len(p))) for p in result.perms.values())
same = all(torch.equal(perms[k], result.perms[k]) for k in perms)
print(json.dumps({"weights": weights, "before": before, "matched": matched, "aligned": aligned, "moved": moved, "same": same}))
"""


def test_weight_matching_takes_the_aligned_copy_and_one_groups_working_set():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["moved"] > 0 and m["same"]  # it did align something, the same way both times
    weights = m["weights"]
    assert weights > 100 << 20
    for what, key, limit in (("match_weights", "matched", MATCH_LIMIT), ("align", "aligned", ALIGN_LIMIT)):
        increase = m[key] - m["before"]
        assert increase <= limit * weights + SLACK, (
            f"{what}: peak RSS rose by {increase / weights:.2f} W (W = {weights / 2**20:.0f} MiB); "
            f"allowed {limit} W + {SLACK >> 20} MiB"
        )
