"""Fixtures for the symmetry tests: the fixture nets (nets.py) and equivalence checks (helpers.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _load(name: str):
    # tests run with --import-mode=importlib, so sibling modules are loaded by path
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_symmetry_tests_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


NETS = _load("nets")
HELPERS = _load("helpers")
RULE_CASES = _load("rule_cases")
GENERATED = _load("generated")


def pytest_generate_tests(metafunc):
    if "net_name" in metafunc.fixturenames:
        metafunc.parametrize("net_name", sorted(NETS.NETS))
    if "rule_case" in metafunc.fixturenames:
        metafunc.parametrize("rule_case", RULE_CASES.CASES, ids=[c.name for c in RULE_CASES.CASES])


@pytest.fixture(scope="session")
def generated():
    """tests/symmetry/generated.py: the random-architecture strategy and its nets."""
    return GENERATED


@pytest.fixture(scope="session")
def rule_cases():
    """tests/symmetry/rule_cases.py: a micro-model case for every key of the rule table."""
    return RULE_CASES


@pytest.fixture(scope="session")
def check():
    """The equivalence helpers: ``check.assert_equivalent``, ``check.randomize``."""
    return HELPERS


@pytest.fixture(scope="session")
def nets():
    return NETS


@pytest.fixture
def net(net_name):
    """(model in float64 with random weights, a batch of 4 inputs) for one fixture net."""
    ctor, shape = NETS.NETS[net_name]
    torch.manual_seed(0)
    model = HELPERS.randomize(ctor().double())
    return model, torch.randn(4, *shape, dtype=torch.double)
