"""State dicts: whether two are of one architecture, and the straight line between them."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch

from modeconn.errors import ArchitectureMismatchError, InvalidArgumentError

__all__ = ["architecture_difference", "check_same_architecture", "lerp_state"]


def architecture_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str | None:
    """Where two state dicts stop being of one architecture (``None`` if they are):
    "`name`: shape (...) vs (...)" or "entry `x` vs `y`"."""
    for (ka, va), (kb, vb) in itertools.zip_longest(a.items(), b.items(), fillvalue=(None, None)):
        if ka == kb and va is not None and vb is not None:
            if va.shape != vb.shape:
                return f"`{ka}`: shape {tuple(va.shape)} vs {tuple(vb.shape)}"
        else:
            return f"entry `{ka}` vs `{kb}`"
    return None


def check_same_architecture(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    *,
    what: str = "model_b",
    of: str = "model_a",
) -> None:
    """Raise :class:`~modeconn.ArchitectureMismatchError` naming the first difference unless
    the two state dicts are of one architecture."""
    if (where := architecture_difference(a, b)) is not None:
        raise ArchitectureMismatchError(
            f"{what} differs from {of} at {where}; they must be of one architecture"
        )
    for name, state in ((of, a), (what, b)):
        empty = next((k for k, v in state.items() if v.is_meta), None)
        if empty is not None:
            raise InvalidArgumentError(
                f"{name}'s {empty!r} is on the meta device: it holds no values. Load its weights first "
                "(load_state_dict(..., assign=True), or to_empty() then load_state_dict)"
            )


def lerp_state(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1 - t) a + t b`` for floating-point entries; integer entries (step counters) from ``a``."""
    return {k: torch.lerp(v, b[k], t) if v.is_floating_point() else v.clone() for k, v in a.items()}
