"""The invariant over real architectures: a randomly permuted model computes the same function
(eval mode, and train mode with dropout off), and every permutable group moves."""

import pytest
import timm
import torch
import torchvision.models as tvm

import modeconn
from modeconn import discover

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", modeconn.list_models())
@pytest.mark.parametrize("in_chans", [3, 1])
def test_registry_models(name, in_chans, check):
    torch.manual_seed(0)
    model = check.randomize(modeconn.create_model(name, num_classes=5, in_chans=in_chans).double())
    spec = check.assert_equivalent(model, torch.randn(3, in_chans, 32, 32, dtype=torch.double))
    assert not spec.unreached, spec.unreached  # GoogLeNet's aux heads are covered by the train-mode trace
    permutable, total = spec.units()
    assert permutable == total  # plain convnets: every hidden unit is permutable


TORCHVISION = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), 64),
    "googlenet": (lambda: tvm.googlenet(num_classes=10, aux_logits=False, init_weights=True), 64),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), 64),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=10), 64),
    "vgg11_bn": (lambda: tvm.vgg11_bn(num_classes=10), 32),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=10), 64),
    "convnext_tiny": (lambda: tvm.convnext_tiny(num_classes=10), 32),
    "vit_b_16": (lambda: tvm.vit_b_16(image_size=32, num_classes=10), 32),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_models(name, check):
    build, size = TORCHVISION[name]
    torch.manual_seed(0)
    model = check.randomize(build())  # float32: these are large; the tolerance is relative
    spec = check.assert_equivalent(model, torch.randn(2, 3, size, size), seeds=(0,))
    permutable, total = spec.units()
    assert permutable / total > 0.99


# Smallest variants of 30 timm families (see benchmarks/zoo.py for the full sweep), with an
# input size that keeps the test fast where the model accepts it.
TIMM = {
    "resnet10t": 64,
    "resnext26ts": 64,
    "seresnet18": 64,
    "ecaresnet26t": 64,
    "efficientnet_lite0": 64,
    "mobilenetv3_small_050": 64,
    "regnetx_002": 64,
    "densenet121": 64,
    "dla46x_c": 64,
    "dpn48b": 64,
    "convnext_atto": 64,
    "vit_tiny_patch16_224": 32,
    "deit_tiny_patch16_224": 32,
    "mixer_s16_224": 32,
    "poolformer_s12": 64,
    "rexnet_100": 64,
    "ghostnet_050": 64,
    "cspresnet50": 64,
    "hrnet_w18_small": 64,
    "mnasnet_small": 64,
    "lcnet_035": 64,
    "repvgg_a0": 64,
    "res2next50": 64,
    "resnest14d": 64,
    "inception_next_atto": 64,
    "pvt_v2_b0": 64,
    "mambaout_femto": 64,
    "fasternet_t0": 64,
    "hgnetv2_b0": 64,
    "gcresnet33ts": 64,
}


def _timm_model(name: str, size: int):
    kwargs = {"img_size": size} if any(name.startswith(p) for p in ("vit", "deit", "mixer")) else {}
    return timm.create_model(name, num_classes=7, drop_rate=0.0, **kwargs)  # some heads use F.dropout


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_families(name, check):
    torch.manual_seed(0)
    size = TIMM[name]
    model = check.randomize(_timm_model(name, size).double())
    spec = check.assert_equivalent(model, torch.randn(2, 3, size, size, dtype=torch.double), seeds=(0,))
    assert spec.permutable


def test_timm_default_input_size_is_inferred():
    model = timm.create_model("resnet10t", num_classes=3).eval()
    spec = discover(model)  # input size from timm's pretrained_cfg
    assert spec.permutable
