"""One mistake, one error: two models of different architectures raise ArchitectureMismatchError
everywhere, with the first difference named."""

from __future__ import annotations

import pytest
import torch

import modeconn


def test_the_same_mistake_raises_one_type_everywhere(tmp_path):
    a = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(6,))
    b = modeconn.create_model("mlp", in_chans=1, img_size=4, hidden=(7,))
    x = torch.randn(8, 1, 4, 4)
    y = torch.zeros(8, dtype=torch.long)
    modeconn.save_checkpoint(b, tmp_path / "b.pt")
    for attempt in (
        lambda: modeconn.align(a, b, x),
        lambda: modeconn.evaluate_line(a, b, 3, [(x, y)]),
        lambda: modeconn.Curve(a, b),
        lambda: modeconn.load_checkpoint(a, tmp_path / "b.pt"),
    ):
        with pytest.raises(
            modeconn.ArchitectureMismatchError,
            match=r"`net.1.weight`: shape \((6, 16\) vs \(7|7, 16\) vs \(6), 16\)",
        ):
            attempt()
    assert issubclass(modeconn.ArchitectureMismatchError, ValueError)


def test_user_errors_subclass_the_builtin_and_are_all_exported():
    import modeconn.errors as errors

    assert set(errors.__all__) <= set(modeconn.__all__)
    assert all(getattr(modeconn, n) is getattr(errors, n) for n in errors.__all__)
    builtin = {
        "InvalidArgumentError": ValueError,
        "DataError": TypeError,
        "UnknownModelError": KeyError,
        "UnknownPluginError": KeyError,
        "DatasetNotFoundError": FileNotFoundError,
        "ArchitectureMismatchError": ValueError,
        "AlignmentError": ValueError,
        "CheckpointError": ValueError,
        "SymmetryError": ValueError,
    }
    for name, base in builtin.items():
        assert issubclass(getattr(errors, name), (errors.ModeconnError, base)) and issubclass(
            getattr(errors, name), base
        )
    with pytest.raises(ValueError, match="lr must be positive"):
        modeconn.train_model(
            torch.nn.Linear(2, 2), (torch.randn(4, 2), torch.zeros(4, dtype=torch.long)), epochs=1, lr=0
        )
    with pytest.raises(TypeError, match="a batch must be"):
        modeconn.evaluate(torch.nn.Linear(2, 2), [3.0])


def test_a_model_on_the_meta_device_is_one_clear_error():
    """Issue 27: align and Curve crashed deep inside on a model that holds no values."""
    import torch.nn as nn

    def mlp():
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    a = mlp()
    with torch.device("meta"):
        b = mlp()
    for call in (
        lambda: modeconn.Curve(a, b),
        lambda: modeconn.align(a, b, torch.randn(8, 3)),
        lambda: modeconn.align(b, a, cost="weight_matching"),
    ):
        with pytest.raises(modeconn.InvalidArgumentError, match=r"'0.weight' is on the meta device"):
            call()
