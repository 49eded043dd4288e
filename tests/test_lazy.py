"""The public API is listed once (the packages' ``TYPE_CHECKING`` imports) and imported on first
use; names that left it still work for a minor version, with a warning that says where."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import modeconn
import modeconn.training
from modeconn.lazy import type_checking_imports


@pytest.mark.parametrize("package", [modeconn, modeconn.training], ids=["modeconn", "modeconn.training"])
def test_every_listed_name_resolves_to_its_home(package):
    homes = type_checking_imports(package.__file__, package.__name__)
    assert homes and set(homes) <= set(package.__all__)
    for name, home in homes.items():
        value = getattr(package, name)
        module = sys.modules[home]
        assert value is module or value is getattr(module, name), name


def test_the_api_exports_what_users_call_and_not_the_internals():
    public = set(modeconn.__all__)
    assert {"align", "collect_statistics", "PairStats", "discover", "Curve", "plugin"} <= public
    assert not public & {
        "hookimpl",
        "reset_plugins",
        "call_model",
        "cost_matrices",
        "solve_groups",
        "distributed",
    }
    assert modeconn.distributed.current  # a submodule not listed is still importable


@pytest.mark.parametrize(
    "old, new",
    [
        ("hookimpl", "modeconn.plugin.hookimpl"),
        ("reset_plugins", "modeconn.plugin.reset_plugins"),
        ("cost_matrices", "modeconn.alignment.cost_matrices"),
        ("call_model", "modeconn.data.batches.call_model"),
        ("Garipov", "modeconn.training.settings.HoldThenLinear"),
    ],
)
def test_a_moved_name_still_works_and_says_where_it_went(old, new):
    module, _, name = new.rpartition(".")
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        value = getattr(modeconn, old)
    assert value is getattr(sys.modules[module], name)


def test_an_unknown_name_is_an_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="no attribute 'aligns'"):
            modeconn.aligns  # noqa: B018


def test_importing_modeconn_imports_no_torch():
    code = "import sys, modeconn; modeconn.__all__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
