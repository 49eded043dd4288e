"""The architecture's rules, read from the source: who may import whom.

Every import counts, also one inside a function (a function-local import that breaks a cycle
only hides it); imports under ``if TYPE_CHECKING:`` do not run and do not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"modeconn": "modeconn", "plugins": "modeconn.plugins", "registry": "modeconn.registry"}
SUBSYSTEMS = ("alignment", "capture", "curves", "data", "symmetry", "training")


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for body in node.orelse for n in _import_nodes(ast.Module([body], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _import_nodes(node)


def imports_of(name: str) -> set[str]:
    """The modeconn modules ``name`` imports, anywhere in its body (not under TYPE_CHECKING)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _reaches(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _subsystem(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBSYSTEMS else None


def test_the_graph_reader_sees_local_imports_and_skips_type_checking():
    # the oracle of every rule below, checked on modules whose imports are known
    assert "modeconn.errors" in GRAPH["modeconn.plugin_manager"]
    assert "modeconn.symmetry.discovery" not in GRAPH["modeconn.symmetry.context"]  # TYPE_CHECKING only
    assert "modeconn.alignment.pipeline" in GRAPH["modeconn.alignment"]  # relative-free package import


def test_no_import_cycles_between_modules():
    """No module reaches itself through imports: none is held together by a local import."""
    cycles = sorted(n for n in GRAPH if n in _reaches(n, GRAPH) and "." in n)
    # the root package `modeconn` lazily names everything and is imported by few; leave it out
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_plugin_manager_is_a_leaf():
    """It knows entries, registries and pluggy; each plugin kind is declared by the module that
    owns its base class."""
    allowed = {"modeconn", "modeconn.errors", "modeconn.hookspecs", "modeconn.lazy"}
    assert _reaches("modeconn.plugin_manager", GRAPH) <= allowed


@pytest.mark.parametrize(
    "low, high", [("symmetry", "alignment"), ("symmetry", "curves"), ("symmetry", "training")]
)
def test_lower_layers_do_not_import_higher_ones(low, high):
    offenders = {
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _subsystem(name) == low
        for target in targets
        if _subsystem(target) == high
    }
    assert not offenders


def test_capture_imports_no_subsystem_that_uses_it():
    offenders = {
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _subsystem(name) == "capture"
        for target in targets
        if _subsystem(target) in ("alignment", "curves", "training", "symmetry")
    }
    assert not offenders


def test_the_core_imports_no_model_file():
    core = [
        n
        for n in GRAPH
        if n.startswith("modeconn.") and not n.startswith(("modeconn.registry", "modeconn.plugins"))
    ]
    models = {n for n in MODULES if n.startswith("modeconn.registry.")}
    offenders = {f"{n} -> {t}" for n in core for t in GRAPH[n] & models}
    assert not offenders


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported before any other modeconn module: an import cycle held together by
    the order of imports fails here with a partially initialised module."""
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    code = (
        "import sys, importlib, traceback\n"
        "import torch  # imported once: what is tested is modeconn's own order\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'modeconn' or m.startswith('modeconn.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
