"""What the command line names, made into objects: models and datasets.

A model is a registry name (``resnet20``, ``timm/resnet18``), a ``package.module:callable``
that returns an ``nn.Module``, a run folder of ``modeconn train`` or ``modeconn align``, or a
checkpoint file inside one (its folder's ``config.toml`` says how to build the architecture).
A dataset is a built-in name (``digits``, ``cifar10``, ``cifar100``, ``tinyimagenet``; all but
``digits`` need a data root) or the path of an ImageFolder tree (``train/`` and ``test/`` or
``val/`` class folders, or class folders directly).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modeconn.errors import DatasetNotFoundError, InvalidArgumentError, UnknownModelError

__all__ = [
    "ModelSpec",
    "Data",
    "model_spec",
    "check_model_name",
    "build_model",
    "open_data",
    "BUILTIN_DATASETS",
]

BUILTIN_DATASETS = {
    "digits": "digits",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "tinyimagenet": "tiny_imagenet",
}


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: ``arch`` (a registry name or ``module:callable``), the classes and
    input channels a registry model is made for, and the weights to load (a file, or none)."""

    arch: str
    num_classes: int | None = None
    in_chans: int | None = None
    weights: str | None = None

    def to_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Data:
    """A dataset's train and test splits and what a model needs to know of them. ``plain`` is
    the training split without augmentation, what units are matched on (alignment, REPAIR);
    BatchNorm statistics are recomputed on the augmented split with fixed draws
    (:class:`modeconn.data.FixedDraws`)."""

    name: str
    train: Any
    test: Any
    num_classes: int
    in_chans: int
    plain: Any = None

    def __post_init__(self) -> None:
        if self.plain is None:
            self.plain = self.train


def _from_run(folder: Path, weights: Path | None) -> ModelSpec:
    from modeconn.runs import read_config

    config = read_config(folder)
    model = config.get("model")
    if not isinstance(model, dict) or "arch" not in model:
        raise InvalidArgumentError(
            f"{os.fspath(folder)!r} holds no model (its config.toml has no [model] table): name the run "
            "folder of `modeconn train` or `modeconn align`, or a registry model"
        )
    file = weights if weights is not None else folder / model.get("weights", "model.safetensors")
    return ModelSpec(model["arch"], model.get("num_classes"), model.get("in_chans"), os.fspath(file))


def _names_a_file(text: str) -> bool:
    """Whether a name that is no model was meant as a file or folder."""
    if text.startswith(("timm/", "torchvision/")):
        return False
    return text.endswith((".pt", ".pth", ".safetensors")) or os.sep in text or "/" in text


def model_spec(text: str, data: Data | None = None) -> ModelSpec:
    """What ``text`` names (see the module docstring); a registry model gets ``data``'s classes
    and channels."""
    path = Path(text)
    if path.is_dir():
        return _from_run(path, None)
    if path.is_file():
        if not (path.parent / "config.toml").is_file():
            raise InvalidArgumentError(
                f"cannot tell the architecture of {text!r}: no config.toml beside it. Checkpoints from "
                "other tools: load them in Python (modeconn.load_checkpoint) or name a registry model"
            )
        return _from_run(path.parent, path)
    if ":" in text:
        return ModelSpec(text)
    from modeconn.registry import is_model

    if not is_model(text):
        if _names_a_file(text):
            raise InvalidArgumentError(f"no such file or folder: {text!r}")
        from modeconn.registry import create_model

        create_model(text)  # raises UnknownModelError with the closest names
    return ModelSpec(
        text,
        data.num_classes if data is not None else None,
        data.in_chans if data is not None else None,
    )


def _declared_models() -> list[str]:
    """The names the registry's own files register, read from their source: the registry
    imports torch, and a misspelt name should be reported before that (about 5 s)."""
    found = importlib.util.find_spec("modeconn.registry")
    names = []
    for folder in (found.submodule_search_locations or []) if found else []:
        for file in sorted(Path(folder).glob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=os.fspath(file))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and any(
                    (d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == "register_model"
                    for d in node.decorator_list
                ):
                    names.append(node.name)
    return names


def check_model_name(text: str) -> None:
    """Raise the error :func:`model_spec` would raise for a model name that names no file,
    folder, ``module:callable`` or registry model, without importing torch. ``timm/`` and
    ``torchvision/`` names pass: only those libraries know theirs."""
    if Path(text).exists() or ":" in text or text.startswith(("timm/", "torchvision/")):
        return
    if "modeconn.registry" in sys.modules:  # models registered in this process count too
        from modeconn.registry import is_model

        known = is_model(text)
        names: list[str] = []
    else:
        names = _declared_models()
        known = text in names
    if known:
        return
    if _names_a_file(text):
        raise InvalidArgumentError(f"no such file or folder: {text!r}")
    if not names:
        model_spec(text)  # the registry's own error, with its closest names
    raise UnknownModelError.among(text, names)


def build_model(spec: ModelSpec) -> Any:
    """The model ``spec`` describes, with its weights loaded."""
    if ":" in spec.arch:
        module_name, _, attr = spec.arch.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise InvalidArgumentError(f"cannot import {spec.arch!r}: {e}") from e
        model = fn()
    else:
        from modeconn.registry import create_model

        kwargs = {k: v for k, v in (("num_classes", spec.num_classes), ("in_chans", spec.in_chans)) if v}
        model = create_model(spec.arch, **kwargs)
    if spec.weights is not None:
        from modeconn.training.checkpoint import load_checkpoint

        load_checkpoint(model, spec.weights)
    return model.eval()


def open_data(name: str, root: str | os.PathLike | None = None, verify: bool = True) -> Data:
    """The dataset ``name`` (see the module docstring), both splits; ``verify=False`` reads a
    copy of CIFAR whose checksums differ from the originals (rebuilt or converted)."""
    from modeconn.data import DATASETS, load_dataset

    key = BUILTIN_DATASETS.get(name)
    if key is not None:
        info = DATASETS[key]
        if key == "digits":
            root, options = None, {}
        elif root is None:
            raise InvalidArgumentError(
                f"dataset {name!r} needs --data-root FOLDER; only 'digits' is embedded"
            )
        else:
            options = {} if key == "tiny_imagenet" else {"verify": verify}
        train = load_dataset(key, root, train=True, **options)
        test = load_dataset(key, root, train=False, **options)
        plain = load_dataset(key, root, train=True, augment=False, **options)
        return Data(name, train, test, info.num_classes, info.in_chans, plain)
    folder = Path(name)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}: name one of {', '.join(BUILTIN_DATASETS)} or an ImageFolder directory"
        )
    from torchvision import datasets, transforms

    split = {s: folder / s for s in ("train", "test", "val") if (folder / s).is_dir()}
    train_dir = split.get("train", folder)
    test_dir = split.get("test", split.get("val", train_dir))
    to_tensor = transforms.ToTensor()
    try:
        train, test = datasets.ImageFolder(train_dir, to_tensor), datasets.ImageFolder(test_dir, to_tensor)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or classes without images
        raise DatasetNotFoundError(
            f"--data {name!r} is not an ImageFolder tree: {str(e).splitlines()[0]}"
        ) from e
    in_chans = train[0][0].shape[0] if len(train) else 3
    return Data(os.fspath(folder), train, test, len(train.classes), in_chans)
