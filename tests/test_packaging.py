"""Guard rails for the folder mapping plugins/ -> modeconn.plugins and registry/ -> modeconn.registry."""

import subprocess
import sys

import tomllib


def test_bare_top_level_names_are_not_importable(tmp_path):
    code = (
        "import importlib.util, modeconn.plugins, modeconn.registry\n"
        "assert importlib.util.find_spec('plugins') is None, 'bare plugins importable'\n"
        "assert importlib.util.find_spec('registry') is None, 'bare registry importable'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_every_package_folder_is_listed_in_pyproject(repo_root):
    REPO = repo_root
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {v: k for k, v in config["package-dir"].items()}
    found = set()
    for init in REPO.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(REPO).parts
        if rel[0] in mapping:
            found.add(".".join((mapping[rel[0]], *rel[1:])))
    assert found == listed


def test_ruff_passes_and_bans_bare_imports(tmp_path, repo_root):
    REPO = repo_root
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("import plugins\nfrom registry import create_model\n")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", str(REPO / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and out.stdout.count("TID251") == 2, out.stdout


def test_code_is_formatted(repo_root):
    """One style everywhere (ruff format, incl. the tutorials' code): run `ruff format .` to fix."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(repo_root)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
