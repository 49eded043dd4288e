"""Loss and accuracy along a curve, with BatchNorm statistics recomputed at each point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modeconn.batchnorm import has_batchnorm
from modeconn.curves.curve import Curve
from modeconn.errors import InvalidArgumentError
from modeconn.metrics import Classification, Metric
from modeconn.path_report import PathReport, evaluate_path, evenly_spaced

__all__ = ["evaluate_curve"]


_REQUIRED: Any = object()


def evaluate_curve(
    curve: Curve,
    test_data: Any,
    *,
    bn_data: Any = _REQUIRED,
    num_points: int = 11,
    label: str = "",
    metrics: Sequence[Metric] = (Classification(),),
    bn_adversary: Any = None,
    progress: bool = False,
) -> PathReport:
    """Loss and accuracy of ``r(t)`` at ``num_points`` evenly spaced ``t`` in [0, 1], and any
    other ``metrics`` (``[Classification(), RobustClassification(PGD.preset("eval"))]`` for
    clean and robust accuracy side by side; the first metric must give ``loss`` and ``accuracy``).

    At each t, BatchNorm running statistics are recomputed on ``bn_data`` (Garipov et al.'s
    ``update_bn``: weights along a curve are not the weights the end points' statistics were
    gathered for) — on clean inputs, or on adversarial ones against r(t) when ``bn_adversary``
    is given (the paper's robust evaluation; Zhao et al. 2020 use clean ones). The report's
    ``meta["bn_data"]`` says which. ``bn_data=None`` keeps the end points' statistics
    interpolated in t instead, which is only right at the end points; a model without BatchNorm
    needs no ``bn_data``. ``progress`` shows a bar over the points. The curve is left unchanged.
    """
    if bn_data is _REQUIRED:
        if has_batchnorm(curve.base):
            raise InvalidArgumentError(
                "the model has BatchNorm: pass bn_data= (training data, on which its statistics are "
                "recomputed at each t), or bn_data=None to interpolate the end points' statistics"
            )
        bn_data = None
    if num_points < 2:
        raise InvalidArgumentError(f"num_points must be >= 2 (the end points at least), got {num_points}")
    ts = evenly_spaced(num_points)
    meta = {"family": curve.family_name, "num_bends": curve.num_bends, "bn_recomputed": bn_data is not None}
    return evaluate_path(
        curve.base,
        ((t, curve.state_at(t)) for t in ts),
        test_data,
        bn_data,
        label=label,
        meta=meta,
        metrics=metrics,
        bn_adversary=bn_adversary,
        progress=progress,
        total=len(ts),
    )
