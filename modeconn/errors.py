"""One exception hierarchy for modeconn: catch :class:`ModeconnError` to catch them all."""

from __future__ import annotations

__all__ = [
    "ModeconnError",
    "UnknownModelError",
    "PretrainedWeightsError",
    "PluginError",
    "UnknownPluginError",
    "DatasetNotFoundError",
    "SymmetryError",
    "TraceError",
    "UnsupportedOpError",
    "AlignmentError",
]


class ModeconnError(Exception):
    """Base class of every error modeconn raises on purpose."""


class UnknownModelError(ModeconnError, KeyError):
    """A model name that no registry (ours, ``timm/``, ``torchvision/``) knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PretrainedWeightsError(ModeconnError):
    """Pretrained weights were requested but are not available offline."""


class PluginError(ModeconnError):
    """A plugin failed while registering or while being used; the message names it."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of the requested kind has the requested name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(ModeconnError, FileNotFoundError):
    """A dataset is not where it was looked for; the message says how to get it."""


class SymmetryError(ModeconnError):
    """Symmetry discovery or permutation failed."""


class TraceError(SymmetryError):
    """torch.fx could not trace the model; the message names the culprit and the remedy."""


class UnsupportedOpError(SymmetryError):
    """Raised in ``strict`` discovery when an op has no permutation rule."""


class AlignmentError(ModeconnError):
    """``align`` cannot proceed: models of different architectures, bad data, NaN/Inf."""


class CheckpointError(ModeconnError):
    """A checkpoint cannot be used: damaged or truncated, or written for another architecture."""
