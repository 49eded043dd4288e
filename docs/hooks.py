"""mkdocs hook: give mkdocstrings (griffe) a source tree laid out like the installed package.

griffe finds modules on the filesystem, but `plugins/` and `registry/` install as
`modeconn.plugins` and `modeconn.registry` through setuptools' package-dir mapping. This hook
mirrors that mapping with symlinks under build/griffe-src/ before the docs are built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT / "build" / "griffe-src"


def on_startup(**kwargs) -> None:
    pkg = MIRROR / "modeconn"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "modeconn").iterdir():
        (pkg / entry.name).symlink_to(entry)
    (pkg / "plugins").symlink_to(ROOT / "plugins")
    (pkg / "registry").symlink_to(ROOT / "registry")
