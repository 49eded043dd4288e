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
    import modeconn

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in ("costs", "curves", "optimizers", "rules"):
        assert f"{kind} (" in out
    assert f"from 'costs' [modeconn {modeconn.__version__} (built-in modeconn.plugins.costs)]" in out
    assert "from 'pam' [" in out and "from 'pgd' [" in out
    # one line per kind and plugin (three for optimizers), not one per rule
    assert len(out.splitlines()) == 10
    assert main(["plugins", "--kind", "rule"]) == 0
    rules = capsys.readouterr().out.splitlines()
    assert len(rules) > 350 and rules[0] == f"rules ({len(rules) - 1}):"
    names = {line.split()[0] for line in rules[1:]}
    assert {"torch.nn.Conv2d", "torch.nn.functional.relu", "method:view", "torch.cat"} <= names
    assert not [n for n in names if "<locals>" in n or "_VariableFunctions" in n]


def test_console_script_installed():
    out = subprocess.run(
        [sys.executable, "-m", "modeconn.cli", "models", "tiny*"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "tinyten"


def test_discover_checks_a_random_permutation_on_digits(capsys, tmp_path):
    spec_file = tmp_path / "spec.json"
    assert main(["discover", "tinyten", "--batch", "16", "--json", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PermutationSpec(TinyTen): 8/8 groups of hidden units permutable")
    assert (
        "on 16 embedded digits: 17 tensors moved" in out
    )  # 8 convs x (weight, bias) + fc.weight; fresh BN tensors are constant
    from modeconn import PermutationSpec

    assert len(PermutationSpec.from_json(spec_file.read_text())) == 9


def test_errors_are_reported_without_traceback(capsys):
    assert main(["discover", "resnet33"]) == 2
    assert "Did you mean: resnet32" in capsys.readouterr().err
    assert main(["discover", "torchvision/resnet18", "--input-shape", "3,a,b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modeconn: error: --input-shape takes C,H,W (e.g. 3,224,224), got '3,a,b'")
    assert len(err.strip().splitlines()) == 1


def test_discover_takes_any_model_at_its_own_input_size(capsys):
    # torchvision's classifiers default to 3×224×224; --input-shape sets any other
    assert main(["discover", "torchvision/resnet18", "--batch", "2", "--input-shape", "3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "PermutationSpec(ResNet)" in out and "on 2 random inputs of shape (3, 64, 64)" in out
    assert main(["discover", "timm/resnet10t", "--batch", "2"]) == 0  # its default config: 3×176×176
    assert "random inputs of shape (3, 176, 176)" in capsys.readouterr().out


def test_version_and_a_closed_pipe():
    import modeconn

    out = subprocess.run([sys.executable, "-m", "modeconn.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"modeconn {modeconn.__version__}"
    piped = subprocess.run(
        f"{sys.executable} -m modeconn.cli models 'timm/*' | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert piped.stdout.strip() == "timm/aimv2_1b_patch14_224" and "BrokenPipeError" not in piped.stderr


def test_help_imports_no_torch():
    """`modeconn --help` answers at once: the package imports its parts on first use."""
    code = (
        "import sys; from modeconn.cli import build_parser; build_parser().format_help(); "
        "import modeconn; modeconn.ResumeWarning; print(sorted(m for m in ('torch', 'numpy', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, "-m", "modeconn.cli", "fit", "--help"], capture_output=True, text=True
    )
    assert "--option KEY=VALUE" in helped.stdout and "--schedule" in helped.stdout


def _subcommands():
    import argparse

    from modeconn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_of_every_command_is_described():
    for command, parser in _subcommands().items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{command} {action.option_strings or action.dest}"
            assert "(default: )" not in parser.format_help(), command


@pytest.mark.usefixtures("fresh_plugins")
def test_the_plugin_options_name_every_built_in_choice():
    """--cost, --family and --optimizer list the built-in names (the registry decides them, so
    the help is checked against it) and point to `modeconn plugins` for the rest."""
    import modeconn.alignment.costs  # noqa: F401  (declares the kinds)
    import modeconn.curves  # noqa: F401
    import modeconn.training  # noqa: F401
    from modeconn.plugin_manager import BUILTIN_PLUGINS, list_plugins

    found = list_plugins()
    for command, flag, kind in (
        ("align", "--cost", "cost"),
        ("fit", "--family", "curve"),
        ("fit", "--optimizer", "optimizer"),
    ):
        action = next(a for a in _subcommands()[command]._actions if flag in a.option_strings)
        built_in = [e.name for e in found[kind] if e.plugin in BUILTIN_PLUGINS]
        assert built_in and all(f" {name}" in action.help for name in built_in), (flag, built_in, action.help)
        assert "`modeconn plugins`" in action.help
