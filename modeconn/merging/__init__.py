"""From aligned models to the model kept: merging N models (:func:`merge`), repairing the
statistics of a merged or interpolated model (:func:`repair`, REPAIR), and aligning or merging
checkpoints too large to hold twice, from their files (:func:`align_files`, :func:`merge_files`)."""

from modeconn.merging.average import METHODS, MergeResult, average_models, compose_perms, merge
from modeconn.merging.correction import ReferenceStatistics, correction_sites, repair
from modeconn.merging.files import FilesResult, align_files, merge_files

__all__ = [
    "merge",
    "MergeResult",
    "METHODS",
    "average_models",
    "compose_perms",
    "repair",
    "ReferenceStatistics",
    "correction_sites",
    "align_files",
    "merge_files",
    "FilesResult",
]
