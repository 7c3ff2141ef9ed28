"""Name-based registry of model builders.

Architectures register a builder with :func:`register_model`; :func:`build_model` then creates a
model by name, which lets experiment configurations assign heterogeneous architectures to
clients with plain strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from edgekd.models.base import EdgeKDModel, check_positive_int

__all__ = [
    "ModelBuilder",
    "build_model",
    "count_parameters",
    "list_models",
    "register_model",
    "register_variant",
]


class ModelBuilder(Protocol):
    """Signature of a registered model builder."""

    def __call__(
        self, num_classes: int, in_channels: int = 3, *, representation_dim: int | None = None
    ) -> EdgeKDModel:
        """Build a model."""
        ...


_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under ``name`` (decorator).

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"resnet20"``. Must be a non-empty string not registered yet.

    Returns
    -------
    Callable
        Decorator that records the builder and returns it unchanged.

    Raises
    ------
    ValueError
        If ``name`` is empty, not a string, or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Return the sorted names of all registered models.

    Returns
    -------
    list of str
        Registered model names in ascending order.
    """
    return sorted(_REGISTRY)


def register_variant(
    name: str,
    model_class: Callable[..., EdgeKDModel],
    *args: Any,
    doc: str,
    **kwargs: Any,
) -> ModelBuilder:
    """Register the builder ``model_class(*args, num_classes, in_channels, **kwargs)`` as ``name``.

    For architectures whose named variants differ only in constructor arguments (depth,
    widening, layer configuration); returns the builder, named ``name`` with docstring ``doc``.
    """

    def builder(
        num_classes: int, in_channels: int = 3, *, representation_dim: int | None = None
    ) -> EdgeKDModel:
        return model_class(
            *args, num_classes, in_channels, representation_dim=representation_dim, **kwargs
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register_model(name)(builder)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    representation_dim: int | None = None,
) -> EdgeKDModel:
    """Build a registered model by name.

    Parameters
    ----------
    name : str
        Registered model name (see :func:`list_models`).
    num_classes : int
        Number of output classes, at least 2.
    in_channels : int, optional
        Number of input image channels (3 for RGB, 1 for grey), at least 1. Default 3.
    representation_dim : int or None, optional
        Size of an optional linear representation layer placed before the output layer; when
        given, ``model.feature_dim == representation_dim``. Default None (no such layer).

    Returns
    -------
    EdgeKDModel
        A freshly initialised model.

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the valid names), or if ``num_classes < 2``,
        ``in_channels < 1`` or ``representation_dim < 1``.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown model name {name!r}; valid names are: {', '.join(list_models())}"
        )
    num_classes = check_positive_int("num_classes", num_classes, 2)
    in_channels = check_positive_int("in_channels", in_channels, 1)
    if representation_dim is not None:
        representation_dim = check_positive_int("representation_dim", representation_dim, 1)
    return _REGISTRY[name](num_classes, in_channels, representation_dim=representation_dim)


def count_parameters(model: nn.Module) -> int:
    """Count the parameters of a model.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch module. Shared parameters are counted once; buffers (e.g. batch-norm running
        statistics) are not counted.

    Returns
    -------
    int
        Total number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters())
