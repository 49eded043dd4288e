"""Curves between networks: the ``Curve`` module, the curve-family plugin API, and evaluation
along a curve."""

from modeconn.curves.curve import Curve
from modeconn.curves.ensemble import Ensemble, curve_ensemble
from modeconn.curves.evaluate import evaluate_curve
from modeconn.curves.family import CurveFamily

__all__ = ["Curve", "CurveFamily", "Ensemble", "curve_ensemble", "evaluate_curve"]
