"""Argument checks shared by the loss functions (clear errors that name the argument)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_logits",
    "check_matching_logits",
    "check_temperature",
    "is_finite_real",
    "weights_tensor",
]


def is_finite_real(value: object) -> bool:
    """Whether ``value`` is a finite real number (bools excluded)."""
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float; ``ValueError`` unless it is finite and > 0."""
    if not is_finite_real(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_logits(name: str, logits: Tensor) -> None:
    """``ValueError`` naming ``name`` unless ``logits`` is a 2-D tensor ``(B, C)``."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape (B, C), got {tuple(logits.shape)}")


def check_matching_logits(name: str, logits: Tensor, student_logits: Tensor) -> None:
    """``ValueError`` naming ``name`` unless ``logits`` is 2-D and shaped like the student's."""
    check_logits(name, logits)
    if logits.shape != student_logits.shape:
        raise ValueError(
            f"{name} shape {tuple(logits.shape)} does not match "
            f"student_logits shape {tuple(student_logits.shape)}"
        )


def weights_tensor(
    name: str,
    weights: Tensor | Sequence[float],
    expected: int,
    like: Tensor,
) -> Tensor:
    """Convert ``weights`` to a 1-D finite non-negative tensor of length ``expected``."""
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.dim() != 1 or w.shape[0] != expected:
        raise ValueError(
            f"{name} must have shape ({expected},) to match the number of score sets, "
            f"got {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {w.tolist()}")
    return w
