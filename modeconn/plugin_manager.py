"""Build the pluggy plugin manager and the per-kind plugin registries.

Everything is built lazily, on first use. modeconn's own plugins are registered first, by
module name (so a vendored copy or a zipapp without package metadata works: pytest's
``default_plugins``), then every plugin of the ``modeconn`` entry-point group, then those
registered in-process with :func:`register_plugin`. Each plugin is checked against the hook
specifications (a misspelled hook is an error naming the hook it probably meant), each
registry checks what is added to it, and every call into a plugin goes through
:meth:`PluginEntry.invoke`, which names the plugin when it fails. ``MODECONN_TRACE_PLUGINS=1``
prints every hook call and every registration on stderr.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as md
import inspect
import os
import sys
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from modeconn import hookspecs
from modeconn.errors import InvalidArgumentError, ModeconnError, PluginError, UnknownPluginError

__all__ = [
    "hookimpl",
    "KINDS",
    "BUILTIN_PLUGINS",
    "PluginEntry",
    "PluginRegistry",
    "get_plugin_manager",
    "get_registry",
    "get_plugin",
    "direct_entry",
    "list_plugins",
    "register_plugin",
    "reset_plugins",
    "key_name",
]

hookimpl = pluggy.HookimplMarker("modeconn")

ENTRY_POINT_GROUP = "modeconn"
DISABLE_AUTOLOAD_ENV = "MODECONN_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "MODECONN_BLOCK_PLUGINS"
TRACE_ENV = "MODECONN_TRACE_PLUGINS"

KINDS: dict[str, str] = {
    "cost": "modeconn_register_costs",
    "curve": "modeconn_register_curves",
    "optimizer": "modeconn_register_optimizers",
    "rule": "modeconn_register_rules",
}
"""Plugin kinds and the hook that fills each kind's registry."""

BUILTIN_PLUGINS: dict[str, str] = {
    "symmetry_rules": "modeconn.plugins.symmetry_rules",
    "costs": "modeconn.plugins.costs",
    "curves": "modeconn.plugins.curves",
    "optimizers": "modeconn.plugins.optimizers",
    "pam": "modeconn.plugins.pam",
    "pgd": "modeconn.plugins.pgd",
}
"""modeconn's own plugins: name -> module, registered before any other."""

_sources: dict[str, str] = {}  # plugin name -> where it comes from (distribution or module)


def _tracing() -> bool:
    return os.environ.get(TRACE_ENV, "") not in ("", "0")


def key_name(key: Hashable) -> str:
    """A readable name for a registry key: a string as it is, a class or function by its
    public import path (``torch.nn.functional.relu``, not ``boolean_dispatch.<locals>.fn``)."""
    if isinstance(key, str):
        return key
    from modeconn.symmetry.context import op_name

    return op_name(key)


@dataclass(frozen=True)
class PluginEntry:
    """One registered thing: its kind, key, the object, and the plugin that added it."""

    kind: str
    key: Hashable
    obj: Any
    plugin: str
    source: str

    @property
    def name(self) -> str:
        return key_name(self.key)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the registered object; an exception is re-raised naming the plugin."""
        return self.invoke(self.obj, *args, **kwargs)

    def invoke(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` (the object or one of its methods); an exception other than modeconn's own
        is re-raised as a :class:`PluginError` naming the plugin (the original is its cause)."""
        try:
            return fn(*args, **kwargs)
        except ModeconnError:
            raise
        except Exception as e:
            what = getattr(fn, "__name__", "it")
            raise PluginError(
                f"{self.kind} plugin {self.name!r} (from plugin {self.plugin!r}, {self.source}) "
                f"raised {type(e).__name__} in {what}: {e}"
            ) from e


class PluginRegistry:
    """What one hook fills: ``key -> object`` for one plugin kind. Plugins call :meth:`add`,
    which checks the object against the kind's contract; modeconn looks entries up with :meth:`get`."""

    def __init__(self, kind: str, validate: Callable[[PluginEntry], None] | None = None):
        self.kind = kind
        self._validate = validate or _VALIDATORS.get(kind)
        self._entries: dict[Hashable, PluginEntry] = {}
        self._current_plugin = "<direct>"

    def add(self, key: Hashable, obj: Any) -> None:
        """Register ``obj`` under ``key``; a key that is already taken is an error naming both
        plugins, and so is an object that does not keep the kind's contract."""
        plugin = self._current_plugin
        source = _sources.get(plugin, "?")
        try:
            taken = key in self._entries
        except TypeError:
            raise PluginError(
                f"plugin {plugin!r} ({source}) added an unhashable {self.kind} key {key!r}"
            ) from None
        if taken:
            other = self._entries[key]
            raise PluginError(
                f"{self.kind} {key_name(key)!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.source}) and by plugin {plugin!r} ({source}); rename one of them."
            )
        entry = PluginEntry(self.kind, key, obj, plugin, source)
        if self._validate is not None:
            self._validate(entry)
        self._entries[key] = entry
        if _tracing():
            print(f"modeconn: plugin {plugin!r} registered {self.kind} {entry.name!r}", file=sys.stderr)

    def get(self, key: Hashable) -> PluginEntry:
        """The entry for ``key``; an unknown key raises an error listing what is available."""
        try:
            return self._entries[key]
        except (KeyError, TypeError):
            pass
        names = sorted(self.names())
        close = difflib.get_close_matches(key_name(key), names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownPluginError(
            f"no {self.kind} plugin named {key_name(key)!r}.{hint} Available: "
            f"{', '.join(names) or '(none)'}. `modeconn plugins` lists installed plugins."
        )

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values()]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[PluginEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


# -- what each kind accepts ------------------------------------------------------------------


def _refuse(entry: PluginEntry, what: str) -> PluginError:
    return PluginError(
        f"plugin {entry.plugin!r} ({entry.source}) registered {entry.kind} {entry.name!r} as "
        f"{_describe(entry.obj)}; {what}"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    return f"a {type(obj).__name__}"


def _validate_cost(entry: PluginEntry) -> None:
    from modeconn.alignment.costs import ActivationCost, WeightCost

    if not isinstance(entry.obj, (ActivationCost, WeightCost)):
        raise _refuse(entry, "a cost is an instance of ActivationCost or WeightCost (modeconn.plugin)")


def _validate_curve(entry: PluginEntry) -> None:
    from modeconn.curves.family import CurveFamily, check_family_law

    if not isinstance(entry.obj, CurveFamily):
        raise _refuse(entry, "a curve family is an instance of CurveFamily (modeconn.plugin)")
    problem = entry.invoke(check_family_law, entry.obj)
    if problem:
        raise _refuse(entry, f"its coefficients break the curve law: {problem}")


def _validate_optimizer(entry: PluginEntry) -> None:
    from modeconn.training.trainer import CurveOptimizer

    if not (isinstance(entry.obj, type) and issubclass(entry.obj, CurveOptimizer)):
        raise _refuse(entry, "an optimizer is a subclass of CurveOptimizer (the class, not an instance)")


def _validate_rule(entry: PluginEntry) -> None:
    import torch.nn as nn

    key = entry.key
    key_ok = (isinstance(key, type) and issubclass(key, nn.Module)) or (
        isinstance(key, str) and key.startswith("method:")
    )
    key_ok = key_ok or (callable(key) and not isinstance(key, type))
    if not key_ok:
        raise _refuse(entry, "a rule's key is an nn.Module class, a function, or 'method:<name>'")
    if not callable(entry.obj) or isinstance(entry.obj, type):
        raise _refuse(entry, "a rule is a function of one RuleContext")


_VALIDATORS: dict[str, Callable[[PluginEntry], None]] = {
    "cost": _validate_cost,
    "curve": _validate_curve,
    "optimizer": _validate_optimizer,
    "rule": _validate_rule,
}


# -- the manager -------------------------------------------------------------------------------


class _Manager(pluggy.PluginManager):
    """Hook implementations are recognized by name, as in pytest: a plugin's ``modeconn_*``
    functions are hooks whether or not they carry :data:`hookimpl`, so a misspelled one is
    caught by the check against the specifications instead of being ignored."""

    def parse_hookimpl_opts(self, plugin: object, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("modeconn_") and inspect.isroutine(getattr(plugin, name, None)):
            opts = {}
        return opts


def _hook_names() -> list[str]:
    return [n for n in vars(hookspecs) if n.startswith("modeconn_")]


def _check_hooks(pm: pluggy.PluginManager) -> None:
    known = set(_hook_names())
    for name in pm.hook.__dict__:
        if name.startswith("modeconn_") and name not in known:
            caller = getattr(pm.hook, name)
            plugins = sorted({impl.plugin_name for impl in caller.get_hookimpls()})
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the hooks are {', '.join(sorted(known))}"
            raise PluginError(
                f"plugin {plugins[0]!r} ({_sources.get(plugins[0], '?')}) implements {name!r}, which is not a "
                f"modeconn hook{hint}"
            )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:  # pragma: no cover - caught above for modeconn_* names
        raise PluginError(str(e)) from e


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager: built-ins by module name, then the ``modeconn`` entry
    points (unless ``MODECONN_DISABLE_PLUGIN_AUTOLOAD`` is set; ``MODECONN_BLOCK_PLUGINS`` skips
    some by name), then plugins registered in-process."""
    pm = _Manager("modeconn")
    pm.add_hookspecs(hookspecs)
    pm.modeconn_order = []  # plugin names in registration order
    if _tracing():
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    for name, module in BUILTIN_PLUGINS.items():
        _register(pm, importlib.import_module(module), name, f"modeconn {_version()} (built-in {module})")
    blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
    autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    for ep in md.entry_points(group=ENTRY_POINT_GROUP) if autoload else ():
        if ep.name in blocked or pm.get_plugin(ep.name) is not None or ep.value in BUILTIN_PLUGINS.values():
            continue
        try:
            plugin = ep.load()
        except Exception as e:
            raise PluginError(
                f"plugin {ep.name!r} ({_entry_point_source(ep)}) failed to import: {type(e).__name__}: {e}. "
                f"Fix or uninstall it, or block it with {BLOCK_ENV}={ep.name}."
            ) from e
        _register(pm, plugin, ep.name, _entry_point_source(ep))
    for name, plugin in _direct_plugins.items():
        _register(pm, plugin, name, _sources[name])
    _check_hooks(pm)
    return pm


def _version() -> str:
    import modeconn

    return modeconn.__version__


def _entry_point_source(ep: md.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version} (entry point {ep.name} = {ep.value})" if dist else ep.value


def _register(pm: pluggy.PluginManager, plugin: object, name: str, source: str) -> None:
    _sources[name] = source
    try:
        pm.register(plugin, name=name)
    except Exception as e:
        raise PluginError(f"plugin {name!r} ({source}) could not be registered: {e}") from e
    pm.modeconn_order.append(name)


_direct_plugins: dict[str, object] = {}


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin module or object in this process (no entry point needed).

    Useful in notebooks and tests; installed plugins should use the entry-point group.
    Returns the plugin's name.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in _direct_plugins or name in BUILTIN_PLUGINS:
        raise PluginError(f"a plugin named {name!r} is already registered in this process")
    _direct_plugins[name] = plugin
    _sources[name] = f"registered in-process ({getattr(plugin, '__name__', type(plugin).__name__)})"
    reset_plugins(keep_direct=True)
    return name


def reset_plugins(keep_direct: bool = False) -> None:
    """Forget the plugin manager and registries so the next use rebuilds them (tests,
    notebooks); plugins registered with :func:`register_plugin` are forgotten too unless
    ``keep_direct``."""
    if not keep_direct:
        _direct_plugins.clear()
    get_plugin_manager.cache_clear()
    get_registry.cache_clear()


@functools.cache
def get_registry(kind: str) -> PluginRegistry:
    """The registry of one plugin kind (``"cost"``, ``"curve"``, ``"optimizer"``, ``"rule"``)."""
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    pm = get_plugin_manager()
    registry = PluginRegistry(kind)
    hook_name = KINDS[kind]
    implementing = {impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()}
    names = [n for n in pm.modeconn_order if n in implementing]  # built-ins first
    for plugin in names:
        # through pluggy (so tracing and monitoring see it), one plugin at a time, so that what
        # is added and what fails carries the plugin's name
        others = [pm.get_plugin(n) for n in names if n != plugin]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
        registry._current_plugin = plugin
        try:
            caller(registry=registry)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(
                f"plugin {plugin!r} ({_sources.get(plugin, '?')}) raised in {hook_name}: {type(e).__name__}: {e}"
            ) from e
    registry._current_plugin = "<direct>"
    return registry


def direct_entry(kind: str, obj: Any, where: str) -> PluginEntry:
    """An object passed to modeconn directly rather than registered (``Curve(a, b, family=
    MyFamily())``), checked against its kind's contract as a registry would."""
    name = getattr(obj, "__name__", None) or type(obj).__name__
    entry = PluginEntry(kind, name, obj, "<direct>", f"passed to {where}")
    _VALIDATORS[kind](entry)
    return entry


def get_plugin(kind: str, name: Hashable) -> PluginEntry:
    """Look up one plugin by kind and name; unknown names raise :class:`UnknownPluginError`."""
    return get_registry(kind).get(name)


def list_plugins() -> dict[str, list[PluginEntry]]:
    """Every registered entry, by kind."""
    return {kind: list(get_registry(kind)) for kind in KINDS}
