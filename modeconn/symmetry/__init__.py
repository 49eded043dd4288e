"""Permutation-symmetry discovery (torch.fx) and permutation of models.

``discover(model, example_inputs)`` traces a model and returns its :class:`PermutationSpec`;
``permute(model, spec, perms)`` applies permutations. Rules for ops live in :mod:`.rules`
(one table, by op family) and are extended through the ``modeconn_register_rules`` plugin hook;
a rule sees a graph node through a :class:`RuleContext`.
"""

from modeconn.symmetry.context import RuleContext, Unsupported
from modeconn.symmetry.discovery import discover
from modeconn.symmetry.permutation import (
    permutation_matrix,
    permute,
    permute_state_dict,
    soft_permute_state_dict,
)
from modeconn.symmetry.spaces import Layout, TensorLayout
from modeconn.symmetry.spec import FIX_KINDS, Fix, Group, PermutationSpec, Site, TensorSlice

__all__ = [
    "discover",
    "permute",
    "permute_state_dict",
    "soft_permute_state_dict",
    "permutation_matrix",
    "PermutationSpec",
    "Group",
    "Fix",
    "FIX_KINDS",
    "TensorSlice",
    "Site",
    "RuleContext",
    "Unsupported",
    "TensorLayout",
    "Layout",
]
