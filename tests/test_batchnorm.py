"""BatchNorm recomputation gives exactly the statistics Garipov et al.'s update_bn defines:
the average over batches of each batch's mean and (unbiased) variance."""

from __future__ import annotations

import torch
import torch.nn as nn

import modeconn
from modeconn import update_bn


def _expected(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer, the mean over batches of the batch mean and unbiased variance of its input."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):

            def record(mod, inputs, name=name):
                x = inputs[0]
                seen.setdefault(name, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

            hooks.append(m.register_forward_pre_hook(record))
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {
        n: (torch.stack([m for m, _ in v]).mean(0), torch.stack([s for _, s in v]).mean(0))
        for n, v in seen.items()
    }


def test_update_bn_recomputes_exact_statistics():
    torch.manual_seed(0)
    model = modeconn.create_model("resnet20", width=4)
    batches = list(torch.randn(64, 3, 32, 32).split(16))
    reference = _expected(__import__("copy").deepcopy(model), batches)
    update_bn(model, batches)
    assert len(reference) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 10
    for name, (mean, var) in reference.items():
        bn = model.get_submodule(name)
        torch.testing.assert_close(bn.running_mean, mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(bn.running_var, var, atol=1e-6, rtol=1e-5)
        assert bn.momentum == 0.1  # restored
    assert model.training


def test_update_bn_restores_mixed_modes_and_leaves_models_without_batchnorm_alone():
    model = modeconn.create_model("resnet20", width=4).train()
    model.bn1.eval()  # frozen BatchNorm inside a training model
    update_bn(model, [torch.randn(8, 3, 32, 32)])
    assert model.training and not model.bn1.training
    mlp = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6,))
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    assert update_bn(mlp, [torch.randn(8, 1, 4, 4)]) is mlp
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
