"""The hookspec module is the plugin author's manual: every hook must be documented."""

import inspect

from modeconn import hookspecs
from modeconn.plugin_manager import KINDS


def _hooks():
    return {n: f for n, f in vars(hookspecs).items() if n.startswith("modeconn_") and callable(f)}


def test_every_hook_is_documented_and_prefixed():
    hooks = _hooks()
    assert set(KINDS.values()) == set(hooks)
    for name, fn in hooks.items():
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 150, f"{name} needs a docstring written for plugin authors"
        assert "registry" in doc and "Returns" in doc, name
