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

import modeconn
from modeconn import hookspecs
from modeconn.errors import InvalidArgumentError, ModeconnError, PluginError, UnknownPluginError

__all__ = [
    "hookimpl",
    "BUILTIN_PLUGINS",
    "PluginKind",
    "PluginEntry",
    "PluginRegistry",
    "declare_kind",
    "declared_kinds",
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
TRACE_ENV = "MODECONN_TRACE_PLUGINS"

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


def _default_key_name(key: Hashable) -> str:
    if isinstance(key, str):
        return key
    module = getattr(key, "__module__", None)
    name = getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or repr(key)
    return f"{module}.{name}" if module else name


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin: its name, the hook that fills its registry, the check every entry
    must pass, and how its keys read. Declared with :func:`declare_kind` by the module that
    owns the kind's base class."""

    name: str
    hook: str
    validate: Callable[[PluginEntry], None]
    key_name: Callable[[Hashable], str] = _default_key_name

    def registry(self) -> PluginRegistry:
        """This kind's registry, built on first use (see :func:`get_registry`)."""
        return get_registry(self.name)

    def get(self, key: Hashable) -> PluginEntry:
        """The registered entry for ``key``; an unknown key raises an error listing what is
        available."""
        return self.registry().get(key)

    def entry(self, obj: Any, where: str) -> PluginEntry:
        """An object passed to modeconn directly rather than registered (``Curve(a, b,
        family=MyFamily())``), checked against this kind's contract as a registry would."""
        name = getattr(obj, "__name__", None) or type(obj).__name__
        entry = PluginEntry(self.name, name, obj, "<direct>", f"passed to {where}", name)
        self.validate(entry)
        return entry

    def resolve(self, obj: Any, where: str) -> PluginEntry:
        """A registered entry when ``obj`` is a name (a string), else :meth:`entry` of it."""
        return self.get(obj) if isinstance(obj, str) else self.entry(obj, where)


_kinds: dict[str, PluginKind] = {}


def declare_kind(
    name: str,
    hook: str,
    validate: Callable[[PluginEntry], None],
    key_name: Callable[[Hashable], str] | None = None,
) -> PluginKind:
    """Declare a plugin kind: ``hook`` (a hook of :mod:`modeconn.hookspecs`) fills its registry,
    and ``validate`` raises :class:`PluginError` for an entry that breaks the kind's contract.
    Declaring a kind again (a module reloaded) replaces it."""
    if not hasattr(hookspecs, hook):
        raise InvalidArgumentError(f"plugin kind {name!r}: {hook!r} is not a hook of modeconn.hookspecs")
    kind = PluginKind(name, hook, validate, key_name or _default_key_name)
    _kinds[name] = kind
    _registry.cache_clear()
    return kind


def declared_kinds() -> dict[str, PluginKind]:
    """The plugin kinds declared so far, by name (importing :mod:`modeconn.plugin` declares
    all of modeconn's)."""
    return dict(_kinds)


def _kind(kind: str | PluginKind) -> PluginKind:
    if isinstance(kind, PluginKind):
        return _kinds.setdefault(kind.name, kind)
    if kind not in _kinds:
        raise InvalidArgumentError(
            f"unknown plugin kind {kind!r}; kinds are {', '.join(_kinds) or '(none declared yet)'}"
        )
    return _kinds[kind]


@dataclass(frozen=True)
class PluginEntry:
    """One registered thing: its kind, key, the object, the plugin that added it, and the key's
    readable name."""

    kind: str
    key: Hashable
    obj: Any
    plugin: str
    source: str
    name: str

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

    def refuse(self, what: str) -> PluginError:
        """The error for an entry that breaks its kind's contract: what it is, and ``what`` the
        contract asks."""
        kind = (
            f"the class {self.obj.__name__}" if isinstance(self.obj, type) else f"a {type(self.obj).__name__}"
        )
        return PluginError(
            f"plugin {self.plugin!r} ({self.source}) registered {self.kind} {self.name!r} as {kind}; {what}"
        )


class PluginRegistry:
    """What one hook fills: ``key -> object`` for one plugin kind. Plugins call :meth:`add`,
    which checks the object against the kind's contract; modeconn looks entries up with :meth:`get`."""

    def __init__(self, kind: PluginKind):
        self.kind = kind.name
        self._spec = kind
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
        name = self._spec.key_name(key)
        if taken:
            other = self._entries[key]
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.source}) and by plugin {plugin!r} ({source}); rename one of them."
            )
        entry = PluginEntry(self.kind, key, obj, plugin, source, name)
        self._spec.validate(entry)
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
        wanted = key if isinstance(key, str) else self._spec.key_name(key)
        close = difflib.get_close_matches(wanted, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownPluginError(
            f"no {self.kind} plugin named {wanted!r}.{hint} Available: "
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
    _registry.cache_clear()


def get_registry(kind: str | PluginKind) -> PluginRegistry:
    """The registry of one plugin kind (a :class:`PluginKind` or its name: ``"cost"``,
    ``"curve"``, ``"optimizer"``, ``"rule"`` once their modules are imported), built on first
    use from every plugin that implements the kind's hook."""
    return _registry(_kind(kind).name)


@functools.cache
def _registry(name: str) -> PluginRegistry:
    kind = _kinds[name]
    pm = get_plugin_manager()
    registry = PluginRegistry(kind)
    implementing = {impl.plugin_name for impl in getattr(pm.hook, kind.hook).get_hookimpls()}
    names = [n for n in pm.modeconn_order if n in implementing]  # built-ins first
    for plugin in names:
        # through pluggy (so tracing and monitoring see it), one plugin at a time, so that what
        # is added and what fails carries the plugin's name
        others = [pm.get_plugin(n) for n in names if n != plugin]
        caller = pm.subset_hook_caller(kind.hook, remove_plugins=others)
        registry._current_plugin = plugin
        try:
            caller(registry=registry)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(
                f"plugin {plugin!r} ({_sources.get(plugin, '?')}) raised in {kind.hook}: {type(e).__name__}: {e}"
            ) from e
    registry._current_plugin = "<direct>"
    return registry


def get_plugin(kind: str | PluginKind, name: Hashable) -> PluginEntry:
    """Look up one plugin by kind and name; unknown names raise :class:`UnknownPluginError`."""
    return get_registry(kind).get(name)


def list_plugins() -> dict[str, list[PluginEntry]]:
    """Every registered entry, by kind (of the kinds declared so far)."""
    found: dict[str, list[PluginEntry]] = {}
    while len(found) < len(_kinds):  # loading a kind's plugins may import modules that declare more
        for name in [n for n in list(_kinds) if n not in found]:
            found[name] = list(get_registry(name))
    return found
