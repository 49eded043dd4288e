"""One exception hierarchy for modeconn: catch :class:`ModeconnError` to catch them all.

Errors caused by what the user passed also subclass the matching builtin (``ValueError``,
``TypeError``, ``KeyError``, ``FileNotFoundError``), so ``except ValueError`` keeps working;
the ``modeconn`` command prints any of them as one line and exits with status 2.
"""

from __future__ import annotations

import difflib


class ModeconnError(Exception):
    """Base class of every error modeconn raises on purpose."""


class _Message:
    """Mixin for KeyError subclasses, which would quote their message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(ModeconnError, ValueError):
    """An argument has a value modeconn cannot use (``lr <= 0``, ``num_points < 2``, an unknown dataset)."""


class DataError(ModeconnError, TypeError):
    """Data in a form modeconn does not read: see :mod:`modeconn.data.batches` for the forms it does."""


class UnknownModelError(_Message, ModeconnError, KeyError):
    """A model name that no registry (ours, ``timm/``, ``torchvision/``) knows."""

    @classmethod
    def among(cls, name: str, candidates: list[str]) -> UnknownModelError:
        """The error for ``name``, suggesting the closest of ``candidates``."""
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return cls(
            f"unknown model {name!r}.{hint} `modeconn models` lists ours; prefix a name with "
            "'timm/' or 'torchvision/' to build one of theirs."
        )


class PretrainedWeightsError(ModeconnError, RuntimeError):
    """Pretrained weights were requested but are not available offline."""


class PluginError(ModeconnError):
    """A plugin failed while registering or while being used, or breaks the plugin contract;
    the message names it."""


class UnknownPluginError(_Message, PluginError, KeyError):
    """No plugin of the requested kind has the requested name."""


class DatasetNotFoundError(ModeconnError, FileNotFoundError):
    """A dataset is not where it was looked for; the message says how to get it."""


class ArchitectureMismatchError(ModeconnError, ValueError):
    """Two models, or a model and a checkpoint, are not of one architecture; the message names
    the first differing entry."""


class SymmetryError(ModeconnError, ValueError):
    """Symmetry discovery or permutation failed."""


class TraceError(SymmetryError):
    """torch.fx could not trace the model; the message names the culprit and the remedy."""


class UnsupportedOpError(SymmetryError):
    """Raised in ``strict`` discovery when an op has no permutation rule."""


class AlignmentError(ModeconnError, ValueError):
    """``align`` cannot proceed: bad data, NaN/Inf in weights or activations."""


class CheckpointError(ModeconnError, ValueError):
    """A checkpoint cannot be used: damaged or truncated, of a format modeconn does not read,
    or written for another architecture (then an :class:`ArchitectureMismatchError`)."""


class TrainingError(ModeconnError, RuntimeError):
    """Training cannot go on: the loss diverged."""


class ResumeWarning(UserWarning):
    """A resumed run was given settings that differ from the checkpoint's, which it keeps."""


__all__ = sorted(
    name
    for name, obj in list(globals().items())
    if isinstance(obj, type) and (issubclass(obj, ModeconnError) or obj is ResumeWarning)
)
