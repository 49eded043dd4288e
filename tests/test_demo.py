import json

from modeconn.cli import main
from modeconn.demo import DemoSettings, run_demo


def test_demo_writes_its_outputs_and_repeats(tmp_path, capsys):
    """`modeconn demo` at a tiny budget: the table, the files, and the same numbers twice."""
    code = main(
        [
            "demo",
            "--out",
            str(tmp_path / "cli"),
            "--epochs",
            "1",
            "--curve-epochs",
            "1",
            "--points",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for row in (
        "unaligned curve",
        "aligned curve",
        "unaligned line",
        "aligned line",
        "mean matched correlation",
    ):
        assert row in out
    for name in (
        "curves.png",
        "correlation_signature.png",
        "results.json",
        "model_a.safetensors",
        "curve_aligned.safetensors",
    ):
        assert (tmp_path / "cli" / name).stat().st_size > 0

    again = run_demo(tmp_path / "api", DemoSettings(epochs=1, curve_epochs=1, num_points=3), progress=False)
    first = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert first["paths"]["aligned curve"]["accuracy"] == again.reports["aligned curve"].accuracy
    assert first["paths"]["unaligned line"]["loss"] == again.reports["unaligned line"].loss
    assert again.reports["aligned curve"].t == [0.0, 0.5, 1.0]
