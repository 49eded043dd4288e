"""Run folders: configs written as TOML read back as they were (hypothesis over nested
settings), and the files a run folder writes."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeconn.errors import InvalidArgumentError
from modeconn.runs import RunFolder, read_config, to_toml, tomllib

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.one_of(scalars, st.lists(st.one_of(st.integers(-100, 100), st.text(max_size=5)), max_size=4))
tables = st.recursive(
    st.dictionaries(keys, values, max_size=5),
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.dictionaries(keys, st.one_of(values, tables), max_size=6))
def test_a_config_reads_back_as_written(config):
    back = tomllib.loads(to_toml(config))
    assert back == config


def test_none_is_left_out_and_odd_values_are_refused():
    assert tomllib.loads(to_toml({"a": None, "t": {"b": None, "c": 1.5}})) == {"t": {"c": 1.5}}
    assert math.isinf(tomllib.loads(to_toml({"x": float("inf")}))["x"])
    with pytest.raises(InvalidArgumentError, match="cannot write set"):
        to_toml({"x": {1, 2}})


def test_a_run_folder_writes_atomically_and_reads_its_config(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_config({"command": "fit", "fit": {"lr": 0.01, "options": {"perm_epochs": 2}}})
    assert read_config(tmp_path / "run") == {
        "command": "fit",
        "fit": {"lr": 0.01, "options": {"perm_epochs": 2}},
    }
    run.write_csv("rows.csv", [{"t": 0.0, "loss": 1.0}, {"t": 1.0, "loss": 0.5}])
    assert (tmp_path / "run" / "rows.csv").read_text().splitlines() == ["t,loss", "0.0,1.0", "1.0,0.5"]
    run.log("one")
    run.log("two\n")
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["one", "two"]
    assert all(re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] .*", line) for line in lines)
    assert [
        p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")
    ] == []  # no temporary files left
    with pytest.raises(InvalidArgumentError, match="has no results.json"):
        run.read_json("results.json")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match="is a file; name a folder"):
        RunFolder(tmp_path / "file")
