"""Packages that import their parts on first use (PEP 562), so that importing them is cheap:
the ``modeconn`` command's ``--help`` and light modules (``modeconn.errors``,
``modeconn.training.settings``) import no torch.

A package lists its public names once, as the imports of its ``if TYPE_CHECKING:`` block —
which type checkers and editors read as ordinary imports — and :func:`lazy_exports` reads that
block to know where each name lives."""

from __future__ import annotations

import ast
import importlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports", "type_checking_imports"]


def type_checking_imports(path: str | Path, package: str) -> dict[str, str]:
    """``name -> module`` for every import under ``if TYPE_CHECKING:`` in the module at ``path``
    (``from a.b import c`` gives ``c -> a.b``; ``from pkg import m``, where ``m`` is a module of
    the package itself, gives ``m -> pkg.m``), in the source's order."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    homes: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module:
                    for alias in stmt.names:
                        homes[alias.asname or alias.name] = stmt.module
    folder = Path(path).parent
    return {
        name: f"{home}.{name}" if home == package and _is_module(folder / name) else home
        for name, home in homes.items()
    }


def _is_module(path: Path) -> bool:
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def lazy_exports(
    package: str,
    namespace: dict[str, Any],
    homes: Mapping[str, str] | None = None,
    moved: Mapping[str, str] = {},
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public ``name`` lives in the
    module ``homes[name]`` (default: read from the package's ``TYPE_CHECKING`` imports; a
    submodule of that name is the module itself); each name is imported on first use and then
    kept in ``namespace`` (the package's globals). ``moved`` maps names that left the package to
    their new home (``"module"``, or ``"module:new_name"`` when renamed): they still work, with
    a :class:`DeprecationWarning` that says where."""
    if homes is None:
        homes = type_checking_imports(namespace["__file__"], package)

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None and name in moved:
            where, _, new_name = moved[name].partition(":")
            new_name = new_name or name
            is_module = where.endswith(f".{name}")
            new = where if is_module else f"{where}.{new_name}"
            warnings.warn(
                f"{package}.{name} is now {new} (the old name goes in the next minor version)",
                DeprecationWarning,
                stacklevel=2,
            )
            module = importlib.import_module(where)
            return module if is_module else getattr(module, new_name)
        if home is None and _is_module(Path(namespace["__file__"]).parent / name):
            home = f"{package}.{name}"  # a submodule not listed: importable, but not public API
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(home)
        value = module if home == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__
