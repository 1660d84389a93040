"""Label rules: which factors make a nodule malignant.

A rule maps the factor table to labels. A :class:`~nodulebench.data.Split` on one factor
(the default, ``spiculation > 0.5``) also lets the spec allocate exact class counts; a
:class:`LinearLabelRule` combines factors; a :class:`LabelFunction` wraps any callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union

import torch

from .distributions import Split
from .factors import FACTORS, get_factor

__all__ = ["AnyLabelRule", "LabelFunction", "LabelRule", "LinearLabelRule", "rule_inputs"]

#: The default label rule: malignant iff spiculation > 0.5 (a clinical malignancy cue).
LabelRule = Split


@dataclass(frozen=True)
class LinearLabelRule:
    r"""Malignant iff a weighted sum of range-normalised continuous factors passes a threshold.

    .. math:: y = \left[\sum_f w_f \, \frac{x_f - \mathrm{low}_f}
              {\mathrm{high}_f - \mathrm{low}_f} > t\right]

    Attributes:
        weights: ``(factor name, weight)`` pairs (a mapping is accepted).
        threshold: the decision threshold ``t``.
    """

    weights: tuple[tuple[str, float], ...]
    threshold: float

    def __init__(self, weights: Mapping[str, float] | tuple[tuple[str, float], ...],
                 threshold: float) -> None:
        pairs = tuple(weights.items()) if isinstance(weights, Mapping) else tuple(weights)
        object.__setattr__(self, "weights", pairs)
        object.__setattr__(self, "threshold", threshold)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Factors the rule reads."""
        return tuple(name for name, _ in self.weights)

    def validate(self, argument: str) -> None:
        """Raise ``ValueError`` on unknown or categorical factors and non-finite numbers."""
        if not self.weights:
            raise ValueError(f"{argument}.weights must name at least one factor; got ()")
        for name, w in self.weights:
            if get_factor(name, argument=f"{argument}.weights").is_categorical:
                raise ValueError(f"{argument}.weights must name continuous factors; "
                                 f"got {name!r}")
            if not math.isfinite(w):
                raise ValueError(f"{argument}.weights must be finite; got {w!r} for {name}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"{argument}.threshold must be finite; got {self.threshold!r}")

    def __call__(self, factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` int64 labels."""
        score = sum(
            w * (factors[f].double() - FACTORS[f].low) / (FACTORS[f].high - FACTORS[f].low)
            for f, w in self.weights
        )
        return (torch.as_tensor(score) > self.threshold).long()

    def describe(self) -> str:
        """Human-readable rule."""
        terms = " + ".join(f"{w:g}*norm({f})" for f, w in self.weights)
        return f"{terms} > {self.threshold:g}"


@dataclass(frozen=True)
class LabelFunction:
    """A user-supplied label rule: ``fn(factors) -> (N,) labels in {0, 1}``.

    Attributes:
        fn: maps the factor dict (``(N,)`` tensors) to ``(N,)`` integer labels.
        inputs: the factors ``fn`` reads (shortcuts must not be among them).
        name: a stable name, used in the spec's fingerprint (cache keys).
    """

    fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
    inputs: tuple[str, ...]
    name: str

    def validate(self, argument: str) -> None:
        """Raise on unknown inputs, a non-callable ``fn`` or an empty name."""
        if not callable(self.fn):
            raise TypeError(f"{argument}.fn must be callable; got {type(self.fn).__name__}")
        for name in self.inputs:
            get_factor(name, argument=f"{argument}.inputs")
        if not self.name:
            raise ValueError(f"{argument}.name must be a non-empty string; got {self.name!r}")

    def __call__(self, factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` int64 labels; ``ValueError`` unless the function returns 0/1 of shape (N,)."""
        n = next(iter(factors.values())).shape[0]
        labels = torch.as_tensor(self.fn(factors))
        if labels.shape != (n,) or not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"label function {self.name!r} must return ({n},) values in "
                             f"{{0, 1}}; got shape {tuple(labels.shape)}")
        return labels.long()

    def describe(self) -> str:
        """Human-readable rule."""
        return f"{self.name}({', '.join(self.inputs)})"


AnyLabelRule = Union[Split, LinearLabelRule, LabelFunction]  # noqa: UP007




def rule_inputs(rule: AnyLabelRule) -> tuple[str, ...]:
    """Factors a label rule reads."""
    return (rule.factor,) if isinstance(rule, Split) else rule.inputs
