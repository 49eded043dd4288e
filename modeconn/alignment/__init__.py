"""Neuron alignment: ``align(model_a, model_b, data)``, its parts, the cost plugin API, and
relaxed (doubly stochastic) permutations."""

from modeconn.alignment.assignment import solve_assignment
from modeconn.alignment.attention_heads import HeadView, head_view
from modeconn.alignment.costs import ActivationCost, WeightCost
from modeconn.alignment.doubly_stochastic import (
    PROJECTIONS,
    birkhoff_decomposition,
    distance_from_doubly_stochastic,
    nearest_permutation,
    project_doubly_stochastic,
)
from modeconn.alignment.pipeline import align, cost_matrices, solve_groups
from modeconn.alignment.result import AlignResult, CorrelationSignature
from modeconn.alignment.stats import PairStats, collect_statistics, graphs_for
from modeconn.alignment.weight_matching import (
    WeightSimilarity,
    match_weights,
    signature_matching,
    weight_similarity,
)

__all__ = [
    "align",
    "AlignResult",
    "CorrelationSignature",
    "collect_statistics",
    "graphs_for",
    "cost_matrices",
    "solve_groups",
    "head_view",
    "HeadView",
    "solve_assignment",
    "match_weights",
    "signature_matching",
    "weight_similarity",
    "WeightSimilarity",
    "ActivationCost",
    "WeightCost",
    "PairStats",
    "PROJECTIONS",
    "project_doubly_stochastic",
    "distance_from_doubly_stochastic",
    "nearest_permutation",
    "birkhoff_decomposition",
]
