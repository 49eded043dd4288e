"""Tiny fixture networks, one per graph pattern discovery must understand."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    """Two residual blocks: the stem and both blocks' outputs form one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c1, self.c2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(8, 5, 1), nn.Conv2d(5, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(x + self.c2(F.relu(self.c1(x))))
        x = x + self.c4(F.relu(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """Inception-like: concatenated branches keep their own groups; BN runs over the concat."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.post = nn.Conv2d(10, 7, 1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = F.relu(self.bn(y))
        left, right = torch.split(y, [4, 6], dim=1)
        y = torch.cat([right, left], 1)  # reordering the branches is still a direct sum
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.post(y)), 1).flatten(1))


class FlattenLinear(nn.Module):
    """Flatten (C, H, W) -> Linear: the linear input axis is channel-major."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(5 * 4 * 4, 9), nn.Linear(9, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(torch.flatten(F.relu(self.conv(x)), 1)))))


class DepthwiseSE(nn.Module):
    """MobileNet/EfficientNet pattern: expand, depthwise, squeeze-excitation gate, project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.expand = nn.Conv2d(6, 12, 1)
        self.dw = nn.Conv2d(12, 24, 3, padding=1, groups=12)  # channel multiplier 2
        self.bn = nn.BatchNorm2d(24)
        self.se_reduce, self.se_expand = nn.Conv2d(24, 4, 1), nn.Conv2d(4, 24, 1)
        self.project = nn.Conv2d(24, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.hardswish(self.stem(x))
        h = F.silu(self.bn(self.dw(F.relu6(self.expand(x)))))
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        x = x + self.project(h * gate)
        return self.fc(x.mean((2, 3)))


class GroupedNorms(nn.Module):
    """Grouped convolution and GroupNorm admit only group-preserving permutations."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.ln = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        x = F.gelu(self.gn(self.c1(x)))
        x = self.grouped(x).permute(0, 2, 3, 1)  # channels last
        x = self.ln(x)
        return self.fc(x.mean((1, 2)))


class Attention(nn.Module):
    """A pre-norm transformer block with a hand-written attention (qkv reshape into heads + SDPA)."""

    def __init__(self, dim=8, heads=2, hidden=12):
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.pos = nn.Parameter(torch.randn(1, 6, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # x: (B, 5 tokens, 5 features)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1) + self.pos
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        x = x + self.gamma * self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x[:, 0])


class TorchMHA(nn.Module):
    """nn.MultiheadAttention (torchvision's ViT uses it)."""

    def __init__(self, dim=8):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.embed(x)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head((x + y).mean(1))


class Sliced(nn.Module):
    """Slicing a channel axis splits its group (GhostNet and DPN do this)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 10, 1)
        self.c2 = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        x = F.relu(self.c1(x))
        y = torch.cat([x[:, :4], self.c2(x[:, :4])], 1)
        z = x[:, 4:] + y[:, 4:]
        return self.fc(torch.cat([y[:, :4], z, x[:, 8:]], 1).amax((2, 3)))


# name -> (constructor, input shape)
NETS = {
    "residual": (Residual, (3, 8, 8)),
    "concat": (Concat, (3, 8, 8)),
    "flatten_linear": (FlattenLinear, (3, 8, 8)),
    "depthwise_se": (DepthwiseSE, (3, 8, 8)),
    "grouped_norms": (GroupedNorms, (3, 8, 8)),
    "attention": (Attention, (5, 5)),
    "torch_mha": (TorchMHA, (5, 4)),
    "sliced": (Sliced, (3, 4, 4)),
}
