"""Shared fixtures: tiny models and a clean plugin state."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeconn.plugin_manager import reset_plugins

REPO = Path(__file__).resolve().parents[1]
CIFAR_ROOT = REPO.parent / "shared" / "data"


@pytest.fixture
def fresh_plugins():
    """Rebuild the plugin manager before and after the test (plugin state is process-wide)."""
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cifar_root() -> Path:
    """The local CIFAR-10 copy next to the repository; the test is skipped when it is absent."""
    if not (CIFAR_ROOT / "cifar-10-batches-py").is_dir():
        pytest.skip(f"no local CIFAR-10 at {CIFAR_ROOT}")
    return CIFAR_ROOT
