"""Resume after a crash: a subprocess is killed (SIGKILL) in the middle of an epoch, then the
same command is run again and must finish from the last checkpoint, as if never interrupted."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import modeconn
from modeconn import Curve, load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import modeconn
    from modeconn.training import Callback

    kind, checkpoint, kill_at, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(96, 3, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g))

    class Crash(Callback):
        def on_batch_end(self, state):
            if state.epoch == kill_at and state.batch == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no except, no finally

    def resnet(seed):
        torch.manual_seed(seed)
        return modeconn.create_model("resnet20", width=4)

    if kind == "model":
        module = resnet(0)
        torch.manual_seed(1)
        history = modeconn.train_model(module, data, epochs=3, batch_size=32, checkpoint=checkpoint,
                                       callbacks=[Crash()], progress=False)
    else:
        module = modeconn.Curve(resnet(0), resnet(1))
        torch.manual_seed(1)
        history = modeconn.fit_curve(module, data, epochs=3, batch_size=32, checkpoint=checkpoint,
                                     callbacks=[Crash()], progress=False)
    print("epochs", [r.epoch for r in history])
    modeconn.save_checkpoint(module, out)
    """
)


def _run(tmp_path, kind, checkpoint, kill_at, out):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), kind, str(checkpoint), str(kill_at), str(out)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _module(kind, tiny_resnet):
    """An empty model or curve of the architecture the script trains, to load its outputs into."""
    return tiny_resnet(0) if kind == "model" else Curve(tiny_resnet(0), tiny_resnet(1))


@pytest.mark.parametrize("kind", ["model", "curve"])
def test_resume_after_kill_mid_epoch(tmp_path, kind, tiny_resnet):
    reference = _run(tmp_path, kind, tmp_path / "ref.pt", 0, tmp_path / "ref.safetensors")
    assert reference.returncode == 0, reference.stderr
    assert "epochs [1, 2, 3]" in reference.stdout

    checkpoint = tmp_path / "run.pt"
    crashed = _run(tmp_path, kind, checkpoint, 2, tmp_path / "out.safetensors")
    assert crashed.returncode == -signal.SIGKILL
    assert load_checkpoint(_module(kind, tiny_resnet), checkpoint)["epoch"] == 1  # epoch 2 was in progress
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []

    resumed = _run(tmp_path, kind, checkpoint, 0, tmp_path / "out.safetensors")
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs [1, 2, 3]" in resumed.stdout  # history of the first run, then epochs 2 and 3

    # the interrupted-and-resumed run ends exactly where the uninterrupted one does
    a, b = _module(kind, tiny_resnet), _module(kind, tiny_resnet)
    load_checkpoint(a, tmp_path / "ref.safetensors")
    load_checkpoint(b, tmp_path / "out.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_a_finished_run_is_not_repeated(tmp_path, tiny_resnet):
    model = tiny_resnet(0)
    data = (torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    first = modeconn.train_model(model, data, epochs=2, checkpoint=tmp_path / "c.pt", progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = modeconn.train_model(model, data, epochs=2, checkpoint=tmp_path / "c.pt", progress=False)
    assert [r.epoch for r in again] == [r.epoch for r in first] == [1, 2]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
