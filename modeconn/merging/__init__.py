"""From aligned models to the model kept: merging N models (:func:`merge`) and repairing the
statistics of a merged or interpolated model (:func:`repair`, REPAIR)."""

from modeconn.merging.average import METHODS, MergeResult, average_models, compose_perms, merge
from modeconn.merging.correction import ReferenceStatistics, correction_sites, repair

__all__ = [
    "merge",
    "MergeResult",
    "METHODS",
    "average_models",
    "compose_perms",
    "repair",
    "ReferenceStatistics",
    "correction_sites",
]
