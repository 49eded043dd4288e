import textwrap

import pytest

import modeconn
from modeconn.errors import PluginError, UnknownPluginError
from modeconn.plugin_manager import get_plugin, get_registry, list_plugins, register_plugin

pytestmark = pytest.mark.usefixtures("fresh_plugins")


def _install_fake_distribution(root, dist, module, body, entry="fake"):
    """A third-party distribution on sys.path: package + dist-info with a `modeconn` entry point."""
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[modeconn]\n{entry} = {module}\n")


FANCY = """
    import modeconn

    def fancy_cost(a, b):
        return a - b

    @modeconn.hookimpl
    def modeconn_register_costs(registry):
        registry.add("fancy", fancy_cost)
"""


def test_third_party_plugin_found_by_name(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "modeconn-fancy", "modeconn_fancy", FANCY, entry="fancy")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = get_plugin("cost", "fancy")
    assert entry.obj(3, 1) == 2
    assert entry.plugin == "fancy"
    assert "modeconn-fancy 0.1" in entry.source
    assert any(e.name == "fancy" for e in list_plugins()["cost"])


def test_autoload_switch_and_block_list(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "modeconn-fancy", "modeconn_fancy", FANCY, entry="fancy")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MODECONN_DISABLE_PLUGIN_AUTOLOAD", "1")
    modeconn.plugin_manager.reset_plugins()
    assert "fancy" not in get_registry("cost")
    assert len(get_registry("rule")) > 0  # built-ins still load
    monkeypatch.delenv("MODECONN_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("MODECONN_BLOCK_PLUGINS", "fancy")
    modeconn.plugin_manager.reset_plugins()
    assert "fancy" not in get_registry("cost")


def test_unknown_name_lists_available():
    class Plugin:
        @modeconn.hookimpl
        def modeconn_register_curves(self, registry):
            registry.add("bezier_test", object)
            registry.add("polychain_test", object)

    register_plugin(Plugin(), name="curves_for_test")
    with pytest.raises(
        UnknownPluginError,
        match=r"no curve plugin named 'beziers_test'.*Did you mean 'bezier_test'.*Available: .*bezier_test, .*polychain_test",
    ):
        get_plugin("curve", "beziers_test")
    with pytest.raises(ValueError, match="kinds are"):
        get_registry("colour")


def test_plugin_raising_on_registration_is_named():
    class Broken:
        @modeconn.hookimpl
        def modeconn_register_optimizers(self, registry):
            raise RuntimeError("boom")

    register_plugin(Broken(), name="broken_plugin")
    with pytest.raises(PluginError, match=r"'broken_plugin'.*modeconn_register_optimizers.*boom"):
        get_registry("optimizer")


def test_plugin_failing_to_import_is_named(tmp_path, monkeypatch):
    _install_fake_distribution(
        tmp_path, "modeconn-bad", "modeconn_bad", "raise ImportError('missing dep')", entry="bad"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError, match=r"plugin 'bad'.*modeconn-bad.*missing dep.*MODECONN_BLOCK_PLUGINS=bad"
    ):
        get_registry("cost")


def test_plugin_raising_on_use_is_named():
    def bad_cost(*args):
        raise ValueError("shape mismatch")

    class Plugin:
        @modeconn.hookimpl
        def modeconn_register_costs(self, registry):
            registry.add("bad_cost", bad_cost)

    register_plugin(Plugin(), name="bad_costs")
    with pytest.raises(
        PluginError, match=r"cost plugin 'bad_cost' \(from plugin 'bad_costs'.*shape mismatch"
    ):
        get_plugin("cost", "bad_cost")(1, 2)


def test_duplicate_names_name_both_plugins():
    def make(tag):
        class P:
            @modeconn.hookimpl
            def modeconn_register_costs(self, registry):
                registry.add("same", tag)

        return P()

    register_plugin(make("a"), name="first")
    register_plugin(make("b"), name="second")
    with pytest.raises(PluginError, match=r"registered twice: by plugin 'first'.*by plugin 'second'"):
        get_registry("cost")
