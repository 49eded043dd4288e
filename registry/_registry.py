"""The model registry: ``register_model``, ``create_model``, ``list_models``, ``is_model``.

Our own architectures register with :func:`register_model`. Names ``timm/<name>`` and
``torchvision/<name>`` route to those libraries' constructors.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn

from modeconn.errors import InvalidArgumentError, PretrainedWeightsError, UnknownModelError

__all__ = [
    "register_model",
    "unregister_model",
    "create_model",
    "list_models",
    "is_model",
    "model_entrypoint",
]

ModelFn = Callable[..., nn.Module]

_model_entrypoints: dict[str, ModelFn] = {}
_model_modules: dict[str, str] = {}

TIMM_PREFIX = "timm/"
TORCHVISION_PREFIX = "torchvision/"


def register_model(fn: ModelFn) -> ModelFn:
    """Register a model constructor under its function name.

    The function takes ``num_classes``, ``in_chans`` and keyword arguments and returns an
    ``nn.Module``. Registering a name twice is an error (it would silently shadow a model).
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise InvalidArgumentError(
            f"model {name!r} is registered twice: by {_model_modules[name]} and by {fn.__module__}; "
            f"rename one, or unregister_model({name!r}) first"
        )
    _model_entrypoints[name] = fn
    _model_modules[name] = fn.__module__
    return fn


def unregister_model(name: str) -> ModelFn:
    """Remove a model registered with :func:`register_model`; returns its constructor."""
    if name not in _model_entrypoints:
        raise _unknown(name)
    _model_modules.pop(name)
    return _model_entrypoints.pop(name)


def snapshot() -> tuple[dict, dict]:
    """The registry's contents, for :func:`restore` (tests keep registrations from leaking)."""
    return dict(_model_entrypoints), dict(_model_modules)


def restore(state: tuple[dict, dict]) -> None:
    """Put back what :func:`snapshot` returned."""
    _model_entrypoints.clear()
    _model_entrypoints.update(state[0])
    _model_modules.clear()
    _model_modules.update(state[1])


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _timm_names() -> list[str]:
    import timm

    return [TIMM_PREFIX + n for n in timm.list_models()]


def _torchvision_names() -> list[str]:
    import torchvision

    return [TORCHVISION_PREFIX + n for n in torchvision.models.list_models()]


def list_models(pattern: str | None = None, *, include_external: bool | None = None) -> list[str]:
    """Registered model names matching an fnmatch ``pattern`` (``"resnet*"``), naturally sorted.

    Names of timm and torchvision models are included when the pattern starts with their
    prefix (``"timm/*"``) or when ``include_external=True``.
    """
    names = list(_model_entrypoints)
    if include_external is None:
        include_external = bool(pattern) and pattern.startswith((TIMM_PREFIX, TORCHVISION_PREFIX))
    if include_external:
        names += _timm_names() + _torchvision_names()
    if pattern:
        names = fnmatch.filter(names, pattern)
    return sorted(names, key=_natural_key)


def is_model(name: str) -> bool:
    """Whether ``create_model(name)`` would find a constructor."""
    if name in _model_entrypoints:
        return True
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX) :])
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        return name[len(TORCHVISION_PREFIX) :] in torchvision.models.list_models()
    return False


def model_entrypoint(name: str) -> ModelFn:
    """The constructor registered under ``name`` (our own registry only)."""
    try:
        return _model_entrypoints[name]
    except KeyError:
        raise _unknown(name) from None


def _unknown(name: str) -> UnknownModelError:
    if name.startswith(TIMM_PREFIX):
        candidates = _timm_names()
    elif name.startswith(TORCHVISION_PREFIX):
        candidates = _torchvision_names()
    else:
        candidates = list(_model_entrypoints)
    return UnknownModelError.among(name, candidates)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, timm-style.

    ``num_classes`` and ``in_chans`` are forwarded when given (``None`` means the constructor's
    default); other keyword arguments go to the constructor as they are. ``normalize`` (a
    dataset name of ``modeconn.data.NORMALIZATION`` or a ``(mean, std)`` pair) puts a
    :class:`~modeconn.modules.Normalize` in front, for inputs in [0, 1] (the convention of
    adversarial robustness: see :mod:`modeconn.attacks`).
    """
    if normalize is not None:
        from modeconn.data.vision import NORMALIZATION
        from modeconn.modules import normalized

        if isinstance(normalize, str):
            if normalize not in NORMALIZATION:
                raise InvalidArgumentError(
                    f"unknown normalization {normalize!r}; use one of {', '.join(NORMALIZATION)} or a (mean, std) pair"
                )
            normalize = NORMALIZATION[normalize]
        mean, std = normalize
        return normalized(create_model(name, num_classes, in_chans, pretrained, **kwargs), mean, std)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], num_classes, in_chans, pretrained, kwargs)
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, in_chans, pretrained, kwargs)
    fn = model_entrypoint(name)
    if pretrained:
        raise PretrainedWeightsError(
            f"modeconn's own model {name!r} has no pretrained weights; train it with "
            f"modeconn's training tools or load a checkpoint you have, and pass pretrained=False."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return fn(**kwargs)


def _create_timm(name: str, num_classes, in_chans, pretrained, kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown(TIMM_PREFIX + name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # network errors come in many types; only reinterpret when weights were asked for
        if not pretrained:
            raise
        raise PretrainedWeightsError(
            f"pretrained weights for timm model {name!r} are not cached here and cannot be "
            f"downloaded ({type(e).__name__}: {e}). Put them in the Hugging Face cache "
            f"(HF_HOME) or pass pretrained=False."
        ) from e


def _create_torchvision(name: str, num_classes, in_chans, pretrained, kwargs) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise _unknown(TORCHVISION_PREFIX + name)
    if in_chans not in (None, 3):
        raise InvalidArgumentError(
            f"torchvision model {name!r} has no in_chans argument; it takes 3-channel input. "
            f"Use a timm model or one of ours for in_chans={in_chans}."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            return torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as e:
            raise PretrainedWeightsError(
                f"pretrained weights {weights} for torchvision model {name!r} are not cached and "
                f"cannot be downloaded ({type(e).__name__}: {e}). Put the file in "
                f"$TORCH_HOME/hub/checkpoints or pass pretrained=False."
            ) from e
    return torchvision.models.get_model(name, weights=None, **kwargs)
