"""Neuron alignment: ``align(model_a, model_b, data)`` and the cost plugin API."""

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.costs import ActivationCost, WeightCost
from modeconn.alignment.driver import AlignResult, Similarity, align
from modeconn.alignment.stats import PairStats

__all__ = [
    "align",
    "AlignResult",
    "Similarity",
    "ActivationCost",
    "WeightCost",
    "PairStats",
    "solve_assignment",
]
