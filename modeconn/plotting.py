"""Matplotlib, imported on demand with a backend that works without a display."""

from __future__ import annotations

import os
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot``; the non-interactive Agg backend unless one was chosen already."""
    import matplotlib

    if "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def finish(fig: Any, path: str | os.PathLike | None) -> Any:
    """Lay ``fig`` out, save it to ``path`` when given, and return it."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
