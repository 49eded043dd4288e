"""Permutation-symmetry discovery (torch.fx) and permutation of models.

``discover(model, example_inputs)`` traces a model and returns its :class:`PermutationSpec`;
``permute(model, spec, perms)`` applies permutations. Rules for ops live in :mod:`.rules`
and are extended through the ``modeconn_permutation_rules`` plugin hook.
"""

from modeconn.symmetry.discovery import TA, RuleContext, discover
from modeconn.symmetry.permute import permute, permute_state_dict
from modeconn.symmetry.spec import Group, PermutationSpec, Site, TensorSlice

__all__ = [
    "discover",
    "permute",
    "permute_state_dict",
    "PermutationSpec",
    "Group",
    "TensorSlice",
    "Site",
    "RuleContext",
    "TA",
]
