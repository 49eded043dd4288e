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
    out = subprocess.run([sys.executable, "-m", "modeconn.cli", "models", "tiny*"], capture_output=True, text=True)
    assert out.stdout.strip() == "tinyten"
