import subprocess
import sys

import pytest

from modeconn.cli import main


def test_models_lists_and_filters(capsys):
    assert main(["models", "res*"]) == 0
    assert capsys.readouterr().out.split() == ["resnet20", "resnet32"]
    assert main(["models", "nomatch*"]) == 1


@pytest.mark.usefixtures("fresh_plugins")
def test_plugins_lists_kinds_and_sources(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in ("costs", "curves", "optimizers", "rules"):
        assert f"{kind} (" in out
    assert "modeconn 0.1.0" in out  # built-ins come from modeconn's own entry points


def test_console_script_installed():
    out = subprocess.run(
        [sys.executable, "-m", "modeconn.cli", "models", "tiny*"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "tinyten"


def test_discover_checks_a_random_permutation_on_digits(capsys, tmp_path):
    spec_file = tmp_path / "spec.json"
    assert main(["discover", "tinyten", "--batch", "16", "--json", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PermutationSpec(TinyTen): 8 permutable / 9 groups")
    assert (
        "on 16 embedded digits: 17 tensors moved" in out
    )  # 8 convs x (weight, bias) + fc.weight; fresh BN tensors are constant
    from modeconn import PermutationSpec

    assert len(PermutationSpec.from_json(spec_file.read_text())) == 9


def test_errors_are_reported_without_traceback(capsys):
    assert main(["discover", "resnet33"]) == 2
    assert "Did you mean: resnet32" in capsys.readouterr().err
