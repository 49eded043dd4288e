"""Model registry (timm-style) and the paper's architectures for 32x32 inputs.

Installed as ``modeconn.registry``; the source lives in the repository's top-level ``registry/``.
"""

from modeconn.registry import googlenet_cifar, mlp, resnet_cifar, tinyten, vgg_cifar  # noqa: F401  (registers the models)
from modeconn.registry._registry import (
    create_model,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
    unregister_model,
)

__all__ = [
    "register_model",
    "unregister_model",
    "create_model",
    "list_models",
    "is_model",
    "model_entrypoint",
]
