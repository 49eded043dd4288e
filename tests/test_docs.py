"""The docs build strictly, and their Python code runs: tutorials are tests.

Every page under docs/ with ```python blocks is executed, block after block in one namespace.
A block followed by an ```output block must print exactly that (line by line, trailing spaces
ignored; ``...`` stands for any text, as in doctest's ELLIPSIS).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modeconn.plugin_manager import reset_plugins

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text())

_BLOCK = re.compile(r"```(python|output)\n(.*?)```", flags=re.S)


def blocks(text: str) -> list[tuple[str, str | None]]:
    """``(code, expected output or None)`` for each python block of a page."""
    out: list[tuple[str, str | None]] = []
    for kind, body in _BLOCK.findall(text):
        if kind == "python":
            out.append((body, None))
        elif out and out[-1][1] is None:
            out[-1] = (out[-1][0], body)
        else:
            raise AssertionError(f"an output block that follows no python block:\n{body}")
    return out


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is ``expected`` (trailing spaces ignored; ``...`` matches any text)."""

    def norm(s: str) -> str:
        return "\n".join(line.rstrip() for line in s.strip("\n").splitlines())

    pattern = ".*?".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), flags=re.S) is not None


def test_every_page_with_code_is_executed():
    assert {"getting-started.md", "symmetry.md", "align.md", "curves.md", "plugins.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_docs_code_runs(page):
    namespace: dict = {"__name__": f"docs_{page}"}
    reset_plugins()
    try:
        for i, (code, expected) in enumerate(blocks((DOCS / page).read_text())):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"docs/{page}[block {i}]", "exec"), namespace)  # noqa: S102
            if expected is not None:
                assert matches(expected, out.getvalue()), (
                    f"docs/{page} block {i} printed:\n{out.getvalue()}\nbut the page says:\n{expected}"
                )
    finally:
        reset_plugins()


def test_the_output_matcher():
    assert matches("a 1\nb ...\n", "a 1  \nb 2.5 and more")
    assert not matches("a 1", "a 2")
    assert not matches("86,488 parameters", "86490 parameters")


def test_mkdocs_build_strict(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=DOCS.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "symmetry" / "index.html").is_file()
