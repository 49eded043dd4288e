"""The docs build strictly, and their Python code runs: tutorials are tests."""

import re
import subprocess
import sys

import pytest

from modeconn.plugin_manager import reset_plugins

PAGES = ["getting-started.md", "symmetry.md", "align.md", "curves.md", "plugins.md"]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_docs_code_runs(page, repo_root, capsys):
    blocks = _python_blocks((repo_root / "docs" / page).read_text())
    assert blocks, f"{page} has no python code"
    namespace: dict = {"__name__": f"docs_{page}"}
    reset_plugins()
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/{page}[block {i}]", "exec"), namespace)  # noqa: S102
    finally:
        reset_plugins()


def test_mkdocs_build_strict(repo_root, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "symmetry" / "index.html").is_file()
