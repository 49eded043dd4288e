"""Build the pluggy plugin manager and the per-kind plugin registries.

Everything is loaded lazily, on first use, from the ``modeconn`` entry-point group; modeconn's
own plugins come in through the same group (see ``pyproject.toml``).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import os
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from modeconn import hookspecs
from modeconn.errors import ModeconnError, PluginError, UnknownPluginError

__all__ = [
    "hookimpl",
    "KINDS",
    "PluginEntry",
    "PluginRegistry",
    "get_plugin_manager",
    "get_registry",
    "get_plugin",
    "list_plugins",
    "register_plugin",
    "reset_plugins",
]

hookimpl = pluggy.HookimplMarker("modeconn")

ENTRY_POINT_GROUP = "modeconn"
DISABLE_AUTOLOAD_ENV = "MODECONN_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "MODECONN_BLOCK_PLUGINS"

KINDS: dict[str, str] = {
    "cost": "modeconn_register_costs",
    "curve": "modeconn_register_curves",
    "optimizer": "modeconn_register_optimizers",
    "rule": "modeconn_permutation_rules",
}
"""Plugin kinds and the hook that fills each kind's registry."""

_sources: dict[str, str] = {}  # plugin name -> where it comes from (distribution or module)


def key_name(key: Hashable) -> str:
    """A readable name for a registry key (a string, a class or a function)."""
    if isinstance(key, str):
        return key
    module = getattr(key, "__module__", None)
    qual = getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or repr(key)
    return f"{module}.{qual}" if module else str(qual)


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
        is re-raised as a :class:`PluginError` naming the plugin."""
        try:
            return fn(*args, **kwargs)
        except ModeconnError:
            raise
        except Exception as e:
            raise PluginError(
                f"{self.kind} plugin {self.name!r} (from plugin {self.plugin!r}, {self.source}) "
                f"raised {type(e).__name__}: {e}"
            ) from e


class PluginRegistry:
    """What one hook fills: ``key -> object`` for one plugin kind.

    Plugins call :meth:`add`; modeconn looks entries up with :meth:`get`.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[Hashable, PluginEntry] = {}
        self._current_plugin = "<direct>"

    def add(self, key: Hashable, obj: Any) -> None:
        """Register ``obj`` under ``key``; a key that is already taken is an error naming both plugins."""
        if key in self._entries:
            other = self._entries[key]
            raise PluginError(
                f"{self.kind} {key_name(key)!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.source}) and by plugin {self._current_plugin!r} "
                f"({_sources.get(self._current_plugin, '?')}); rename one of them."
            )
        plugin = self._current_plugin
        self._entries[key] = PluginEntry(self.kind, key, obj, plugin, _sources.get(plugin, "?"))

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


def _entry_point_source(ep: md.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version} (entry point {ep.name} = {ep.value})" if dist else ep.value


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use from the ``modeconn`` entry points."""
    pm = pluggy.PluginManager("modeconn")
    pm.add_hookspecs(hookspecs)
    blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
    builtin_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0")
    eps = md.entry_points(group=ENTRY_POINT_GROUP)
    if not any(ep.dist is not None and ep.dist.name == "modeconn" for ep in eps):
        raise PluginError(
            "modeconn's built-in plugins are registered through its package metadata, which was not "
            "found: install modeconn (`pip install -e .` in a checkout) rather than importing it from "
            "a source folder."
        )
    for ep in eps:
        is_builtin = ep.dist is not None and ep.dist.name == "modeconn"
        if ep.name in blocked or (builtin_only and not is_builtin) or pm.get_plugin(ep.name) is not None:
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
    return pm


def _register(pm: pluggy.PluginManager, plugin: object, name: str, source: str) -> None:
    _sources[name] = source
    try:
        pm.register(plugin, name=name)
    except Exception as e:
        raise PluginError(f"plugin {name!r} ({source}) could not be registered: {e}") from e


_direct_plugins: dict[str, object] = {}


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin module or object in this process (no entry point needed).

    Useful in notebooks and tests; installed plugins should use the entry-point group.
    Returns the plugin's name.
    """
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in _direct_plugins:
        raise PluginError(f"a plugin named {name!r} is already registered in this process")
    _direct_plugins[name] = plugin
    _sources[name] = f"registered in-process ({getattr(plugin, '__name__', type(plugin).__name__)})"
    reset_plugins(keep_direct=True)
    return name


def reset_plugins(keep_direct: bool = False) -> None:
    """Forget the plugin manager and registries so the next use rebuilds them (tests, notebooks)."""
    if not keep_direct:
        _direct_plugins.clear()
    get_plugin_manager.cache_clear()
    get_registry.cache_clear()


@functools.cache
def get_registry(kind: str) -> PluginRegistry:
    """The registry of one plugin kind (``"cost"``, ``"curve"``, ``"optimizer"``, ``"rule"``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    pm = get_plugin_manager()
    registry = PluginRegistry(kind)
    hook: Callable = getattr(pm.hook, KINDS[kind])
    # Call each implementation on its own so that additions and failures carry the plugin's name.
    for impl in hook.get_hookimpls():  # registration order: built-ins first
        registry._current_plugin = impl.plugin_name
        try:
            impl.function(registry=registry)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(
                f"plugin {impl.plugin_name!r} ({_sources.get(impl.plugin_name, '?')}) raised in "
                f"{KINDS[kind]}: {type(e).__name__}: {e}"
            ) from e
    registry._current_plugin = "<direct>"
    return registry


def get_plugin(kind: str, name: Hashable) -> PluginEntry:
    """Look up one plugin by kind and name; unknown names raise :class:`UnknownPluginError`."""
    return get_registry(kind).get(name)


def list_plugins() -> dict[str, list[PluginEntry]]:
    """Every registered entry, by kind."""
    return {kind: list(get_registry(kind)) for kind in KINDS}
