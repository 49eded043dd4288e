"""Curves between networks: the ``Curve`` module and the curve-family plugin API."""

from modeconn.curves.curve import Curve
from modeconn.curves.family import CurveFamily

__all__ = ["Curve", "CurveFamily"]
