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
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modeconn.errors import InvalidArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RunFolder", "read_config", "to_toml", "run_folder_of", "run_state", "refuse_overwriting"]

CONFIG = "config.toml"
STATE = "state.json"


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
    if path.suffix != ".toml":
        raise InvalidArgumentError(
            f"{os.fspath(path)!r} is a file, not a run folder: name the folder that holds it "
            f"({os.fspath(path.parent)!r}) or its config.toml"
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"{os.fspath(path)!r} is not valid TOML: {e}") from e


def run_folder_of(text: str | os.PathLike) -> Path | None:
    """The run folder a command-line argument names: the folder itself (one holding a
    ``config.toml``), the folder of a checkpoint or config file inside one, or ``None``."""
    path = Path(text)
    if path.is_file():
        path = path.parent
    return path if (path / CONFIG).is_file() else None


def refuse_overwriting(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Raise when the folder ``out`` is, lies inside or contains one of the run folders that
    ``inputs`` (argument name -> value) name: writing there would damage an input."""
    target = Path(out).resolve()
    for name, value in inputs.items():
        folder = run_folder_of(value) if value is not None else None
        if folder is None:
            continue
        folder = folder.resolve()
        if target == folder:
            how = "is"
        elif folder in target.parents:
            how = "lies inside"
        elif target in folder.parents:
            how = "contains"
        else:
            continue
        raise InvalidArgumentError(
            f"--out {os.fspath(out)!r} {how} the input run {name} ({os.fspath(value)!r}): writing there "
            "would damage it; name a new folder"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def run_state(folder: str | os.PathLike) -> dict[str, Any]:
    """What a run folder records of its progress: ``state`` (``"running"``, ``"interrupted"``,
    ``"failed"`` or ``"complete"``) and, for training steps, ``epoch`` done of ``epochs``. A run
    recorded as running whose process is gone (killed) reads as interrupted. A folder from
    before states were recorded reads as complete when it holds its results."""
    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        return {"state": "complete" if (folder / "results.json").is_file() else "unknown"}
    state = json.loads(path.read_text())
    if (
        state.get("state") == "running"
        and state.get("host") == socket.gethostname()
        and not _pid_alive(int(state.get("pid", 0)))
    ):
        state["state"] = "interrupted"
    return state


def describe_state(state: Mapping[str, Any]) -> str:
    """``"interrupted after epoch 2 of 5"`` and the like."""
    text = str(state.get("state"))
    if state.get("epochs"):
        text += f" after epoch {state.get('epoch', 0)} of {state['epochs']}"
    return text


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

    @staticmethod
    def check(
        path: str | os.PathLike,
        command: str,
        settings: Mapping[str, Any],
        *,
        mutable: Iterable[str] = (),
        restart: bool = False,
        defaults: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Whether ``path`` may hold this run, before anything is written: a new or empty
        folder, or one holding a run of the same ``command`` whose settings differ in
        ``mutable`` keys only (returned as ``"key old -> new"``: a resume that will say so).
        Anything else is refused with the differences, unless ``restart``: the old contents
        are then kept aside (``<path>.restart-N``) and the run starts over. A setting the
        folder does not record (it predates the setting) counts as its value in ``defaults``."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InvalidArgumentError(f"--out {os.fspath(path)!r} is a file; name a folder")
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 checks (and restarts) alone
            return []
        if not path.is_dir() or not any(path.iterdir()):
            return []
        if restart:
            aside = _aside(path)
            os.replace(path, aside)
            path.mkdir()
            with open(path / "log.txt", "a") as f:
                f.write(f"restarted: the previous contents are kept in {os.fspath(aside)}\n")
            return []
        again = f"name a new folder, or pass --restart to keep its contents aside (in {os.fspath(_aside(path))!r}) and start over"
        if not (path / CONFIG).is_file():
            raise InvalidArgumentError(f"--out {os.fspath(path)!r} is not empty and holds no run: {again}")
        saved = read_config(path)
        if saved.get("command") != command:
            raise InvalidArgumentError(
                f"--out {os.fspath(path)!r} holds a `{saved.get('command')}` run, not a `{command}` run: {again}"
            )
        old = {**(defaults or {}), **saved.get(command, {})}
        changed = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        mutable = set(mutable)
        fixed = [k for k in changed if k not in mutable]
        if fixed:
            diffs = "; ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in fixed)
            raise InvalidArgumentError(
                f"--out {os.fspath(path)!r} holds a {command} run with other settings ({diffs}): "
                f"resuming would mix them; {again}"
            )
        return [f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in changed]

    def set_state(self, state: str, **info: Any) -> None:
        """Record the run's progress (see :func:`run_state`)."""
        from modeconn.training.checkpoint import atomic_write

        if not self.main:
            return
        record = {"state": state, **info, "pid": os.getpid(), "host": socket.gethostname()}
        text = json.dumps(record)
        atomic_write(self / STATE, lambda tmp: Path(tmp).write_text(text + "\n"))

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
        """Append ``line`` to ``log.txt``, stamped with the time."""
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self / "log.txt", "a") as f:
            f.write(f"[{stamp}] {line.rstrip()}\n")


def _aside(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.restart-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.restart-{n}")
