"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` or ``TypeError`` whose message names the argument,
what was expected and what was received, so a user sees at once what to change.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_floating",
    "check_in_range",
    "check_int",
    "check_integer_tensor",
    "check_ndim",
    "check_positive",
    "did_you_mean",
]


def did_you_mean(value: Any, choices: Collection[Any]) -> str:
    """A `` (did you mean 'x'?)`` suffix naming the choice closest to a misspelt string.

    Empty when ``value`` is not a string or nothing is close, so callers can always append
    it to their message.

    Example:
        >>> did_you_mean("diamter_mm", ["diameter_mm", "spiculation"])
        " (did you mean 'diameter_mm'?)"
    """
    if not isinstance(value, str):
        return ""
    names = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"{name} must be one of {accepted}; got {value!r}{did_you_mean(value, choices)}"
        )


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a finite real number ``> 0`` (or ``>= 0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    bound = ">= 0" if allow_zero else "> 0"
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")


def check_in_range(
    name: str, value: float, low: float, high: float, *, inclusive: bool = True
) -> None:
    """Raise unless ``low <= value <= high`` (strict bounds when not inclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    ok = low <= value <= high if inclusive else low < value < high
    if not (math.isfinite(value) and ok):
        brackets = "[{}, {}]" if inclusive else "({}, {})"
        raise ValueError(f"{name} must lie in {brackets.format(low, high)}; got {value!r}")


def check_ndim(name: str, tensor: Any, ndims: Collection[int], shape_hint: str) -> None:
    """Raise unless ``tensor`` is a tensor whose rank is one of ``ndims``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shape_hint}; got shape {tuple(tensor.shape)}")


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has a floating-point dtype."""
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype; got {tensor.dtype}")


def check_integer_tensor(name: str, tensor: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has an integer (not bool) dtype."""
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype; got {tensor.dtype}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` unless it is not an ``int`` (bool excluded) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}; got {value!r}")
    return value


def check_same_device(
    name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless ``tensor`` is on ``other``'s device."""
    if tensor.device != other.device:
        raise ValueError(
            f"{name} must be on the device of {other_name} ({other.device}); got {tensor.device}"
        )
