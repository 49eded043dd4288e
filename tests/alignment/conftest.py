"""Fixtures for the alignment tests: the symmetry tests' fixture nets and helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load(name: str):
    path = Path(__file__).parents[1] / "symmetry" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_alignment_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def nets():
    return _load("nets")


@pytest.fixture(scope="session")
def check():
    return _load("helpers")
