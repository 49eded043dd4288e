import os

import pytest
import torch

import modeconn
from modeconn import CheckpointError, Curve, load_checkpoint, save_checkpoint
from modeconn.training.checkpoint import atomic_write


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_model_and_curve(tmp_path, suffix, tiny_resnet):
    a, b = tiny_resnet(0), tiny_resnet(1)
    path = save_checkpoint(a, tmp_path / f"a{suffix}")
    c = tiny_resnet(2)
    assert load_checkpoint(c, path) == {}
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())

    curve = Curve(a, b)
    with torch.no_grad():
        curve.bends.add_(1.0)
    save_checkpoint(curve, tmp_path / f"curve{suffix}")
    other = Curve(b, a)
    load_checkpoint(other, tmp_path / f"curve{suffix}")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in curve.state_dict().items())


def test_training_state_round_trips_and_needs_pt(tmp_path, tiny_resnet):
    a = tiny_resnet()
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    a(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_checkpoint(a, tmp_path / "a.pt", optimizer=opt.state_dict(), epoch=3, history=[{"loss": 1.0}])
    extra = load_checkpoint(tiny_resnet(1), tmp_path / "a.pt")
    assert extra["epoch"] == 3 and extra["history"] == [{"loss": 1.0}]
    opt2 = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(extra["optimizer"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    with pytest.raises(CheckpointError, match=r"needs a \.pt checkpoint"):
        save_checkpoint(a, tmp_path / "a.safetensors", epoch=3)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_other_architecture_is_named(tmp_path, suffix, tiny_resnet):
    save_checkpoint(tiny_resnet(num_classes=10), tmp_path / f"a{suffix}")
    with pytest.raises(
        modeconn.ArchitectureMismatchError,
        match=r"another architecture.*`fc\.weight`: shape \(10, 16\) vs \(7, 16\)",
    ):
        load_checkpoint(tiny_resnet(num_classes=7), tmp_path / f"a{suffix}")
    with pytest.raises(modeconn.ArchitectureMismatchError, match="another architecture"):
        load_checkpoint(modeconn.create_model("tinyten"), tmp_path / f"a{suffix}")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_is_a_clear_error(tmp_path, suffix, tiny_resnet):
    path = save_checkpoint(tiny_resnet(), tmp_path / f"a{suffix}")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="it is truncated or damaged, or not a checkpoint"):
        load_checkpoint(tiny_resnet(), path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tiny_resnet(), tmp_path / "missing.pt")


class Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path, tiny_resnet):
    """Loading uses weights_only=True: a file that would run code on load is rejected."""
    torch.save({"format": "x", "state": {}, "payload": Arbitrary()}, tmp_path / "evil.pt")
    with pytest.raises(
        CheckpointError, match=r"holds pickled Python objects \(an object of type [\w.]*Arbitrary\)"
    ) as e:
        load_checkpoint(tiny_resnet(), tmp_path / "evil.pt")
    assert "truncated" not in str(e.value) and "delete" not in str(e.value).lower()  # the file is fine
    assert len(str(e.value).replace(str(tmp_path / "evil.pt"), "")) < 300  # a line or two, not torch's ten


def test_what_researchers_have_loads(tmp_path, tiny_resnet):
    from safetensors.torch import save_file

    a = tiny_resnet(0)
    torch.save(a.state_dict(), tmp_path / "plain.pt")  # a plain state dict
    save_file(
        {k: v.contiguous() for k, v in a.state_dict().items()}, tmp_path / "other.safetensors"
    )  # no metadata
    torch.save(torch.nn.DataParallel(a).state_dict(), tmp_path / "dp.pt")  # keys prefixed with `module.`
    for name in ("plain.pt", "other.safetensors", "dp.pt"):
        b = tiny_resnet(1)
        assert load_checkpoint(b, tmp_path / name) == {}
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()), name
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint: it holds a list, not a state dict"):
        load_checkpoint(tiny_resnet(), tmp_path / "list.pt")


def test_checkpoints_get_the_users_permissions_and_permission_errors_stay_themselves(tmp_path, tiny_resnet):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tiny_resnet(), tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(PermissionError):
            load_checkpoint(tiny_resnet(), path)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, tiny_resnet):
    path = save_checkpoint(tiny_resnet(0), tmp_path / "a.pt")
    before = path.read_bytes()

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.pt"]
