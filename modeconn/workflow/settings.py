"""The settings of the workflow's steps: each step's defaults (:data:`DEFAULTS`), the type and
range of each setting, and a step's settings checked over its defaults (:func:`resolved`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from modeconn.errors import InvalidArgumentError
from modeconn.training.settings import CURVES, END_POINTS, SETTING_NAMES, Settings  # light: no torch

# the training settings and their defaults are Settings' own (lr: each step's default)
_FIT_SETTINGS = {k: v for k, v in asdict(END_POINTS).items() if k != "lr"}

DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "data": "digits",
        "data_root": None,
        "verify": True,
        "train_samples": None,
        "test_samples": None,
        "epochs": 10,
        "lr": END_POINTS.lr,
        **_FIT_SETTINGS,
        "seed": 0,
        "device": None,
    },
    "align": {
        "data": None,
        "data_root": None,
        "verify": True,
        "cost": "correlation",
        "num_samples": 2048,
        "batch_size": 256,
        "seed": 0,
        "device": None,
    },
    "fit": {
        "data": None,
        "data_root": None,
        "verify": True,
        "train_samples": None,
        "optimizer": "sgd",
        "family": "bezier",
        "num_bends": 1,
        "epochs": 5,
        "lr": CURVES.lr,
        **_FIT_SETTINGS,
        "seed": 0,
        "device": None,
        "options": {},
    },
    "evaluate": {
        "data": None,
        "data_root": None,
        "verify": True,
        "num_points": 11,
        "bn_samples": 2048,
        "test_samples": None,
        "batch_size": 256,
        "plane": 0,
        "label": "",
        "device": None,
    },
    "merge": {
        "data": None,
        "data_root": None,
        "verify": True,
        "method": "mean",
        "cost": "correlation",
        "weights": None,
        "reference": 0,
        "repair": "auto",
        "num_samples": 2048,
        "bn_samples": 2048,
        "test_samples": None,
        "batch_size": 256,
        "max_iterations": 10,
        "seed": 0,
        "device": None,
    },
    "export": {
        "data": None,
        "data_root": None,
        "verify": True,
        "t": None,
        "bn_samples": 2048,
        "batch_size": 256,
        "device": None,
    },
}
"""Every step's settings and their defaults (``a``, ``b``, ``model``, ``run`` and ``runs`` have
none). A ``data`` of ``None`` is taken from the input runs (``digits`` when they record none)."""

_TYPES: dict[str, type] = {"data": str, "data_root": str, "device": str, "model": str}
_TYPES |= {"test_samples": int, "train_samples": int}
_TYPES |= {"a": str, "b": str, "run": str, "line": list, "runs": list, "weights": list}
_AT_LEAST = {"epochs": 0, "num_points": 2, "num_samples": 1, "bn_samples": 1, "test_samples": 1}
_AT_LEAST |= {"train_samples": 1}
_AT_LEAST |= {"batch_size": 1, "num_bends": 0, "reference": 0, "max_iterations": 1}
# settings that take one of a few words (merge's methods are modeconn.merging.METHODS: a test
# keeps the two lists one, and this one is read without importing torch)
_CHOICES = {"method": ("mean", "star"), "repair": ("auto", "yes", "no")}
_KIND_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
_KIND_NAMES |= {dict: "a table", list: "a list"}
# what may change when a run resumes into its folder (it says so); anything else changes the result
MUTABLE = {"epochs", "device", "label", *SETTING_NAMES}


def setting_type(step: str, key: str) -> type | None:
    """The type a setting of ``step`` takes: its default's, or the declared one where the
    default is ``None``."""
    default = DEFAULTS[step].get(key)
    return _TYPES.get(key, type(default) if default is not None else None)


def _check_value(step: str, key: str, value: Any) -> None:
    """``value`` has the type of ``key``'s default and lies in its range: one line if not."""
    kind = setting_type(step, key)
    if value is None or kind is None:
        return
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise InvalidArgumentError(f"{step} setting {key} = {value!r} must be {_KIND_NAMES[kind]}")
    low = _AT_LEAST.get(key)
    if low is not None and value < low:
        raise InvalidArgumentError(f"{step} setting {key} = {value!r} must be at least {low}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise InvalidArgumentError(
            f"{step} setting {key} = {value!r} must be one of {', '.join(_CHOICES[key])}"
        )
    if key == "plane" and value != 0 and value < 2:
        raise InvalidArgumentError(
            f"{step} setting plane = {value!r} must be 0 (no plane) or a grid of at least 2"
        )


def resolved(step: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over the step's defaults, each value checked (type and range); an unknown key
    is an error that names the known ones."""
    known = (
        set(DEFAULTS[step]) | {"model", "a", "b", "run", "line"} | ({"runs"} if step == "merge" else set())
    )
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidArgumentError(
            f"unknown setting(s) for {step}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for key, value in given.items():
        _check_value(step, key, value)
    out = {**DEFAULTS[step], **given}
    # models and runs named by a path are kept absolute: the config reruns from any folder
    for key in ("model", "a", "b", "run"):
        if isinstance(out.get(key), str) and os.path.exists(out[key]):
            out[key] = os.path.abspath(out[key])
    if out.get("line"):
        if len(out["line"]) != 2 or not all(isinstance(v, str) for v in out["line"]):
            raise InvalidArgumentError(f"{step} setting line must name two models, got {out['line']!r}")
        out["line"] = [os.path.abspath(v) if os.path.exists(v) else v for v in out["line"]]
    if out.get("runs"):
        if not all(isinstance(v, str) for v in out["runs"]):
            raise InvalidArgumentError(f"{step} setting runs must name run folders, got {out['runs']!r}")
        out["runs"] = [os.path.abspath(v) if os.path.exists(v) else v for v in out["runs"]]
    return out


def _settings(cfg: Mapping[str, Any]) -> Settings:
    return Settings(lr=cfg["lr"], **{k: cfg[k] for k in _FIT_SETTINGS})
