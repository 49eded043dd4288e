import importlib.metadata as md
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from modeconn.plugins.curves import Bezier

import modeconn
from modeconn import plugin_manager, testing
from modeconn.errors import PluginError, UnknownPluginError
from modeconn.plugin import (
    ActivationCost,
    CurveOptimizer,
    get_plugin,
    get_registry,
    list_plugins,
    register_plugin,
)
from modeconn.plugin_manager import get_plugin_manager

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
    from modeconn.plugin import ActivationCost

    class Fancy(ActivationCost):
        maximize = True

        def matrix(self, stats):
            return stats.correlation()

    @modeconn.plugin.hookimpl
    def modeconn_register_costs(registry):
        registry.add("fancy", Fancy())
"""


def test_third_party_plugin_found_by_name(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "modeconn-fancy", "modeconn_fancy", FANCY, entry="fancy")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = get_plugin("cost", "fancy")
    assert type(entry.obj).__name__ == "Fancy" and entry.plugin == "fancy"
    assert "modeconn-fancy 0.1" in entry.source
    assert any(e.name == "fancy" for e in list_plugins()["cost"])
    testing.check_cost("fancy")  # the contract kit, as the plugin's own CI would run it


def test_autoload_switch_and_block_list(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "modeconn-fancy", "modeconn_fancy", FANCY, entry="fancy")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MODECONN_DISABLE_PLUGIN_AUTOLOAD", "1")
    modeconn.plugin.reset_plugins()
    assert "fancy" not in get_registry("cost")
    assert len(get_registry("rule")) > 0  # built-ins still load
    monkeypatch.delenv("MODECONN_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("MODECONN_BLOCK_PLUGINS", "fancy")
    modeconn.plugin.reset_plugins()
    assert "fancy" not in get_registry("cost")


def test_builtins_need_no_package_metadata(monkeypatch):
    """A vendored copy or a zipapp has no entry points: the built-ins are registered by name."""
    monkeypatch.setattr(md, "entry_points", lambda **kw: [])
    modeconn.plugin.reset_plugins()
    assert {e.name for e in get_registry("cost")} == {"correlation", "l2_preact", "weight_matching"}
    assert get_plugin("optimizer", "sgd").obj is CurveOptimizer
    assert get_plugin("curve", "bezier").plugin == "curves"


class _Bezier2(Bezier):
    """A valid family under another name."""


def test_unknown_name_lists_available():
    class Plugin:
        @modeconn.plugin.hookimpl
        def modeconn_register_curves(self, registry):
            registry.add("bezier_test", _Bezier2())
            registry.add("polychain_test", _Bezier2())

    register_plugin(Plugin(), name="curves_for_test")
    with pytest.raises(
        UnknownPluginError,
        match=r"no curve plugin named 'beziers_test'.*Did you mean 'bezier_test'.*Available: .*bezier_test, .*polychain_test",
    ):
        get_plugin("curve", "beziers_test")
    with pytest.raises(ValueError, match="kinds are"):
        get_registry("colour")


@pytest.mark.parametrize("decorated", [True, False])
def test_a_misspelled_hook_is_an_error(decorated):
    def modeconn_register_cost(registry):  # singular: not a hook
        pass

    class Plugin:
        pass

    Plugin.modeconn_register_cost = staticmethod(
        modeconn.plugin.hookimpl(modeconn_register_cost) if decorated else modeconn_register_cost
    )
    register_plugin(Plugin(), name="typo_plugin")
    with pytest.raises(
        PluginError,
        match=r"plugin 'typo_plugin' .* implements 'modeconn_register_cost', which is not a modeconn hook; "
        r"did you mean 'modeconn_register_costs'\?",
    ):
        get_registry("cost")


def test_hooks_without_the_marker_still_run():
    """As in pytest, hook functions are found by their name."""

    class Plugin:
        def modeconn_register_curves(self, registry):
            registry.add("plain_hook", _Bezier2())

    register_plugin(Plugin(), name="unmarked")
    assert get_plugin("curve", "plain_hook").plugin == "unmarked"


class _OffStart(Bezier):
    def coefficients(self, t, num_bends):
        return torch.roll(super().coefficients(t, num_bends), 1)  # c(0) selects θ_B: r(0) would be θ_B


@pytest.mark.parametrize(
    "kind, hook, obj, why",
    [
        (
            "cost",
            "modeconn_register_costs",
            lambda a, b: a - b,
            "a cost is an instance of ActivationCost or WeightCost",
        ),
        ("cost", "modeconn_register_costs", ActivationCost, "a cost is an instance"),
        ("curve", "modeconn_register_curves", object(), "a curve family is an instance of CurveFamily"),
        ("curve", "modeconn_register_curves", _OffStart(), "does not select the end point exactly"),
        ("optimizer", "modeconn_register_optimizers", object, "a subclass of CurveOptimizer"),
        ("rule", "modeconn_register_rules", 42, "a rule is a function of one RuleContext"),
    ],
)
def test_registries_check_what_is_added(kind, hook, obj, why):
    plugin = type(
        "P",
        (),
        {hook: staticmethod(modeconn.plugin.hookimpl(lambda registry: registry.add(_key(kind), obj)))},
    )
    register_plugin(plugin(), name="bad_adder")
    with pytest.raises(PluginError, match=rf"plugin 'bad_adder' .*registered {kind} .*{why}"):
        get_registry(kind)


class _NewLayer(nn.Module):
    pass


def _key(kind):
    return _NewLayer if kind == "rule" else "x"


def test_plugin_raising_on_registration_is_named():
    class Broken:
        @modeconn.plugin.hookimpl
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


class _Dividing(Bezier):
    def coefficients(self, t, num_bends):
        if 0 < float(t) < 1 and float(t) not in (0.25, 0.5, 0.75):  # passes the law, fails in use
            raise ZeroDivisionError("division by zero")
        return super().coefficients(t, num_bends)


class _Perturbing(CurveOptimizer):
    def perturb(self, x, y, t):
        raise ValueError("cannot perturb")


class _Hooking(CurveOptimizer):
    def on_epoch_start(self, epoch):
        raise KeyError("epoch state")


def test_every_kind_of_plugin_is_named_when_it_fails_in_use():
    class Plugin:
        @modeconn.plugin.hookimpl
        def modeconn_register_curves(self, registry):
            registry.add("dividing", _Dividing())

        @modeconn.plugin.hookimpl
        def modeconn_register_optimizers(self, registry):
            registry.add("perturbing", _Perturbing)
            registry.add("hooking", _Hooking)

    register_plugin(Plugin(), name="failing_plugins")
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    curve = modeconn.Curve(a, b, family="dividing")
    with pytest.raises(
        PluginError, match=r"curve plugin 'dividing' \(from plugin 'failing_plugins'.*ZeroDivisionError"
    ):
        curve(torch.randn(2, 3), 0.3)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    for name, error in (
        ("perturbing", "ValueError in perturb: cannot perturb"),
        ("hooking", "KeyError in on_epoch_start"),
    ):
        with pytest.raises(
            PluginError, match=rf"optimizer plugin '{name}' \(from plugin 'failing_plugins'.*{error}"
        ):
            modeconn.fit_curve(modeconn.Curve(a, b), data, optimizer=name, epochs=1, progress=False)


def test_duplicate_names_name_both_plugins():
    def make():
        class P:
            @modeconn.plugin.hookimpl
            def modeconn_register_curves(self, registry):
                registry.add("same", _Bezier2())

        return P()

    register_plugin(make(), name="first")
    register_plugin(make(), name="second")
    with pytest.raises(PluginError, match=r"registered twice: by plugin 'first'.*by plugin 'second'"):
        get_registry("curve")


def test_hooks_are_called_through_pluggy_and_can_be_traced(monkeypatch, capfd):
    calls = []
    pm = get_plugin_manager()
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append(name), lambda *a: None)
    plugin_manager._registry.cache_clear()  # the registries alone, the manager and its monitor kept
    get_registry("cost")
    undo()
    assert calls == ["modeconn_register_costs"] * 1  # one pluggy call per implementing plugin
    monkeypatch.setenv("MODECONN_TRACE_PLUGINS", "1")
    modeconn.plugin.reset_plugins()
    get_registry("curve")
    err = capfd.readouterr().err
    assert "modeconn: plugin 'curves' registered curve 'bezier'" in err
    assert "modeconn_register_curves" in err  # pluggy's own trace of the hook call


def test_a_kind_is_declared_by_its_owner_and_named_either_way():
    from modeconn.alignment.costs import COSTS
    from modeconn.plugin_manager import declare_kind, declared_kinds

    assert declared_kinds()["cost"] is COSTS
    assert get_registry(COSTS) is get_registry("cost") is COSTS.registry()
    assert COSTS.get("correlation") is get_plugin("cost", "correlation")
    with pytest.raises(modeconn.errors.InvalidArgumentError, match="not a hook of modeconn.hookspecs"):
        declare_kind("colour", "modeconn_register_colours", lambda entry: None)
    with pytest.raises(modeconn.errors.InvalidArgumentError, match="unknown plugin kind 'colour'.*cost"):
        get_registry("colour")


@pytest.mark.parametrize(
    "owner, kind, obj, why",
    [
        ("modeconn.alignment.costs", "COSTS", object(), "an instance of ActivationCost or WeightCost"),
        ("modeconn.curves.family", "CURVE_FAMILIES", _OffStart(), "does not select the end point exactly"),
        ("modeconn.training.trainer", "OPTIMIZERS", object, "a subclass of CurveOptimizer"),
    ],
)
def test_an_object_passed_directly_is_checked_as_a_registry_would(owner, kind, obj, why):
    import importlib

    plugin_kind = getattr(importlib.import_module(owner), kind)
    with pytest.raises(PluginError, match=rf"passed to here.*{why}"):
        plugin_kind.resolve(obj, "here")


def test_list_plugins_in_a_fresh_process_lists_the_kinds_its_plugins_declare():
    """Loading one kind's plugins imports modules that declare other kinds: every kind declared
    by the end is listed (iterating the declared kinds while they grew raised RuntimeError)."""
    code = (
        "import modeconn.alignment.costs\n"
        "from modeconn.plugin_manager import declared_kinds, list_plugins\n"
        "found = list_plugins()\n"
        "assert set(found) == set(declared_kinds()), (sorted(found), sorted(declared_kinds()))\n"
        "assert {'correlation', 'weight_matching'} <= {e.name for e in found['cost']}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
