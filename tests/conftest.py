"""Shared fixtures: tiny models and a clean plugin state."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeconn.plugin_manager import reset_plugins

REPO = Path(__file__).resolve().parents[1]
CIFAR_ROOT = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_registries():
    """No test sees another's registrations: the model registry is restored and the plugin
    manager rebuilt after every test (both are process-wide). Rebuilding costs ~7 ms."""
    from modeconn.registry import _registry

    saved = _registry.snapshot()
    yield
    _registry.restore(saved)
    reset_plugins()


@pytest.fixture
def fresh_plugins():
    """Rebuild the plugin manager before the test too (after it, every test does)."""
    reset_plugins()
    yield


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cifar_root() -> Path:
    """The local CIFAR-10 copy next to the repository; the test is skipped when it is absent."""
    if not (CIFAR_ROOT / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no local CIFAR-10 at {CIFAR_ROOT}")
    return CIFAR_ROOT


TINY_WIDTHS = (8, 8, 16, 16, 16, 32, 32, 32)


@pytest.fixture(scope="session")
def digits_pair():
    """Two tiny TinyTens trained briefly from different seeds on the embedded digits, with a
    test loader and a BatchNorm loader. Session-wide: tests must not modify the models."""
    import torch

    import modeconn
    from modeconn.data import alignment_subset, digits

    train = digits(train=True, augment=False)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = modeconn.create_model("tinyten", in_chans=1, widths=TINY_WIDTHS)
        modeconn.train_model(model, train, epochs=4, lr=0.05, batch_size=64, progress=False)
        models.append(model)
    test = torch.utils.data.DataLoader(digits(train=False), batch_size=256)
    bn = torch.utils.data.DataLoader(alignment_subset(train, num_samples=512, seed=0), batch_size=256)
    return models[0], models[1], test, bn
