"""Run folders: what one command of the ``modeconn`` CLI leaves behind.

A run folder holds ``config.toml`` (the command and every setting it ran with, resolved: rerun
it with ``--config``), ``results.json`` (and ``results.csv`` for tables), figures, checkpoints
and ``log.txt``. Later commands read earlier folders: a model is named by its run folder or by a
checkpoint inside one, whose ``config.toml`` says how to build the architecture.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RunFolder", "read_config", "to_toml"]

CONFIG = "config.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        # a TOML basic string: JSON's escapes are TOML's, but not its surrogate pairs (hence the
        # characters as they are) and TOML escapes DEL too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidArgumentError(f"cannot write {type(value).__name__} {value!r} to a TOML config")


def to_toml(config: Mapping[str, Any], _prefix: str = "") -> str:
    """``config`` as TOML: each level's scalars and lists, then one table per dict value (nested
    dicts as dotted tables; ``None`` values are left out: TOML has no null)."""
    lines = [
        f"{k} = {_toml_value(v)}" for k, v in config.items() if v is not None and not isinstance(v, Mapping)
    ]
    for name, table in config.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{_prefix}{name}]", to_toml(table, f"{_prefix}{name}.").rstrip("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A ``config.toml`` (or the one in the run folder ``path``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG
    if not path.is_file():
        raise InvalidArgumentError(f"no config at {os.fspath(path)!r}: name a run folder or its config.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"{os.fspath(path)!r} is not valid TOML: {e}") from e


class RunFolder:
    """One run's folder: created on demand; :meth:`log` appends to ``log.txt``. Under
    ``torchrun`` only rank 0 writes (``main``); the other ranks' writes do nothing."""

    def __init__(self, path: str | os.PathLike):
        from modeconn import distributed  # here, not at import: the CLI's --help imports no torch

        self.path = Path(path)
        self.main = distributed.current().is_main
        if self.path.exists() and not self.path.is_dir():
            raise InvalidArgumentError(f"--out {os.fspath(self.path)!r} is a file; name a folder")
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: Mapping[str, Any]) -> Path:
        from modeconn.training.checkpoint import atomic_write

        text = to_toml(config)
        if not self.main:
            return self / CONFIG
        return atomic_write(self / CONFIG, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> Path:
        from modeconn.training.checkpoint import atomic_write

        text = json.dumps(data, indent=1)
        if not self.main:
            return self / name
        return atomic_write(self / name, lambda tmp: Path(tmp).write_text(text + "\n"))

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        from modeconn.training.checkpoint import atomic_write

        if not self.main:
            return self / name

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
                writer.writeheader()
                writer.writerows(rows)

        return atomic_write(self / name, write)

    def read_json(self, name: str) -> Any:
        path = self / name
        if not path.is_file():
            raise InvalidArgumentError(
                f"{os.fspath(self.path)!r} has no {name}: run the command that writes it first"
            )
        return json.loads(path.read_text())

    def log(self, line: str) -> None:
        if not self.main:
            return
        with open(self / "log.txt", "a") as f:
            f.write(line.rstrip("\n") + "\n")
