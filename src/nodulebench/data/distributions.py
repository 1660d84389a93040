"""Marginal distributions of factors, and the splits that define label sides.

A distribution turns exogenous uniforms ``u`` in ``(0, 1)`` into factor values by an
inverse CDF, so that the same ``u`` gives the same value wherever it is evaluated, and a
distribution *restricted to one side of a split* (the conditional used for exact label and
shortcut counts) reuses the very same ``u``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

import torch

from .factors import Factor, get_factor

__all__ = [
    "ByCategory",
    "Categorical",
    "Distribution",
    "Fixed",
    "LogUniform",
    "Split",
    "Uniform",
    "draw",
]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_real(argument: str, value: object) -> None:
    """``TypeError`` unless ``value`` is a real number (a string such as ``"5"`` is not)."""
    if not _is_real(value):
        raise TypeError(f"{argument} must be a real number; got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Split:
    """Splits one factor's values into a malignant-looking and a benign-looking side.

    Continuous factors split at ``threshold`` (values above it look malignant when
    ``malignant_above``); categorical factors split into ``malignant_categories`` and the
    rest.

    Attributes:
        factor: factor name.
        threshold: split point of a continuous factor (``None`` for categorical).
        malignant_above: direction of a continuous split.
        malignant_categories: malignant-looking categories of a categorical factor.
    """

    factor: str
    threshold: float | None = None
    malignant_above: bool = True
    malignant_categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_real("Split threshold", self.threshold)

    def validate(self, argument: str) -> None:
        """Raise ``ValueError`` naming ``argument`` when the split is not well formed."""
        spec = get_factor(self.factor, argument=f"{argument}.factor")
        if spec.is_categorical:
            unknown = [c for c in self.malignant_categories if c not in spec.categories]
            if (
                unknown
                or not self.malignant_categories
                or len(set(self.malignant_categories)) == len(spec.categories)
            ):
                raise ValueError(
                    f"{argument}.malignant_categories must be a non-empty proper subset of "
                    f"{spec.categories}; got {self.malignant_categories!r}"
                )
        else:
            t = self.threshold
            if t is None or not math.isfinite(t) or not spec.low < t < spec.high:
                raise ValueError(
                    f"{argument}.threshold must lie in ({spec.low}, {spec.high}) for "
                    f"{self.factor}; got {t!r}"
                )

    def malignant_side(self, values: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: which values lie on the malignant-looking side."""
        spec = get_factor(self.factor)
        if spec.is_categorical:
            codes = torch.tensor(
                [spec.categories.index(c) for c in self.malignant_categories], device=values.device
            )
            return torch.isin(values, codes)
        threshold = float(self.threshold)  # type: ignore[arg-type]  # validated
        return values > threshold if self.malignant_above else values <= threshold

    def describe(self) -> str:
        """Human-readable rule, e.g. ``"spiculation > 0.5"``."""
        if self.threshold is None:
            return f"{self.factor} in {{{', '.join(self.malignant_categories)}}}"
        op = ">" if self.malignant_above else "<="
        return f"{self.factor} {op} {self.threshold:g}"


@dataclass(frozen=True)
class Uniform:
    """Uniform over ``[low, high]``, optionally with the open gap ``exclude`` removed.

    A gap keeps samples away from a label threshold (the default spiculation marginal is
    ``Uniform(0, 1, exclude=(0.35, 0.65))``), so the causal cue is never ambiguous.
    """

    low: float
    high: float
    exclude: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_real("Uniform low", self.low)
        _check_real("Uniform high", self.high)
        if self.low > self.high:
            raise ValueError(
                f"Uniform low must be <= high; got low={self.low!r} > high={self.high!r}"
            )
        if self.exclude is not None:
            if not isinstance(self.exclude, (tuple, list)) or len(self.exclude) != 2:
                raise TypeError(
                    f"Uniform exclude must be a pair (a, b) or None; got {self.exclude!r}"
                )
            for bound in self.exclude:
                _check_real("Uniform exclude", bound)

    def intervals(self) -> tuple[tuple[float, float], ...]:
        """Disjoint closed intervals carrying the (equal-density) mass."""
        if self.exclude is None:
            return ((self.low, self.high),)
        a, b = self.exclude
        parts = ((self.low, min(a, self.high)), (max(b, self.low), self.high))
        return tuple(p for p in parts if p[1] > p[0])

    def validate(self, factor: Factor, argument: str) -> None:
        """Raise ``ValueError`` unless the support lies inside the factor's range."""
        if factor.is_categorical:
            raise ValueError(
                f"{argument} must be Categorical or Fixed for the categorical "
                f"factor {factor.name}; got {self!r}"
            )
        ok = all(math.isfinite(v) for v in (self.low, self.high)) and (
            factor.low <= self.low <= self.high <= factor.high
        )
        if not ok:
            raise ValueError(
                f"{argument} must lie in [{factor.low}, {factor.high}] "
                f"{factor.unit}; got [{self.low}, {self.high}]"
            )
        if self.exclude is not None and (
            not self.exclude[0] < self.exclude[1] or not self.intervals()
        ):
            raise ValueError(
                f"{argument}.exclude must be an interval (a, b), a < b, leaving "
                f"some mass; got {self.exclude!r}"
            )

    def sample(self, u: torch.Tensor, parents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse CDF: ``(N,)`` uniforms to ``(N,)`` values."""
        del parents
        parts = self.intervals()
        lows = torch.tensor([p[0] for p in parts], dtype=u.dtype, device=u.device)
        lengths = torch.tensor([p[1] - p[0] for p in parts], dtype=u.dtype, device=u.device)
        ends = torch.cumsum(lengths, 0)
        t = u * ends[-1]
        which = torch.searchsorted(ends, t, right=True).clamp(max=len(parts) - 1)
        return lows[which] + (t - (ends - lengths)[which])

    def restrict(self, split: Split, malignant: bool) -> Uniform:
        """This distribution conditioned on one side of ``split`` (same density there)."""
        t = float(split.threshold)  # type: ignore[arg-type]  # validated
        if malignant == split.malignant_above:
            low, high = max(self.low, t), self.high
        else:
            low, high = self.low, min(self.high, t)
        if high <= low or not Uniform(low, high, self.exclude).intervals():
            side = "malignant" if malignant else "benign"
            raise ValueError(
                f"the {side}-looking side of {split.describe()} has no mass under {self!r}"
            )
        return Uniform(low, high, self.exclude)


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform over ``[low, high]`` (``0 < low``): small values far more frequent.

    Density proportional to ``1 / x``; the median is ``sqrt(low * high)``. Used for
    screening-like diameters (:meth:`~nodulebench.NoduleSpec.screening`).
    """

    low: float
    high: float

    def validate(self, factor: Factor, argument: str) -> None:
        """Raise ``ValueError`` unless ``0 < low < high`` lies inside the factor's range."""
        if factor.is_categorical:
            raise ValueError(
                f"{argument} must be Categorical or Fixed for the categorical "
                f"factor {factor.name}; got {self!r}"
            )
        ok = all(math.isfinite(v) for v in (self.low, self.high)) and (
            0 < self.low < self.high and factor.low <= self.low and self.high <= factor.high
        )
        if not ok:
            raise ValueError(
                f"{argument} must satisfy 0 < low < high within [{factor.low}, "
                f"{factor.high}] {factor.unit}; got [{self.low}, {self.high}]"
            )

    def sample(self, u: torch.Tensor, parents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse CDF ``low * (high / low) ** u``."""
        del parents
        return self.low * torch.exp(u * math.log(self.high / self.low))

    def restrict(self, split: Split, malignant: bool) -> LogUniform:
        """This distribution conditioned on one side of ``split`` (same density there)."""
        t = float(split.threshold)  # type: ignore[arg-type]  # validated
        if malignant == split.malignant_above:
            low, high = max(self.low, t), self.high
        else:
            low, high = self.low, min(self.high, t)
        if not low < high:
            side = "malignant" if malignant else "benign"
            raise ValueError(
                f"the {side}-looking side of {split.describe()} has no mass under {self!r}"
            )
        return LogUniform(low, high)


@dataclass(frozen=True)
class Categorical:
    """Categories drawn with the given weights (normalised), e.g. ``{"solid": 0.6, ...}``."""

    weights: tuple[tuple[str, float], ...]

    def __init__(self, weights: Mapping[str, float] | tuple[tuple[str, float], ...]) -> None:
        if isinstance(weights, Mapping):
            pairs = tuple(weights.items())
        elif isinstance(weights, (tuple, list)):
            pairs = tuple(weights)
        else:
            raise TypeError(
                "Categorical weights must be a mapping {category: weight} or a "
                f"tuple of (category, weight) pairs; got {type(weights).__name__} "
                f"{weights!r}"
            )
        pairs = tuple(tuple(p) if isinstance(p, list) else p for p in pairs)  # from JSON
        for pair in pairs:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and _is_real(pair[1])
            ):
                raise TypeError(
                    f"Categorical weights must be (category name, number) pairs; got {pair!r}"
                )
        object.__setattr__(self, "weights", pairs)

    def validate(self, factor: Factor, argument: str) -> None:
        """Raise ``ValueError`` on unknown categories or non-positive total weight."""
        if not factor.is_categorical:
            raise ValueError(
                f"{argument} must be Uniform or Fixed for the continuous factor "
                f"{factor.name}; got {self!r}"
            )
        for name, w in self.weights:
            if name not in factor.categories:
                raise ValueError(
                    f"{argument} categories must be among {factor.categories}; got {name!r}"
                )
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{argument} weights must be finite and >= 0; got {w!r}")
        if sum(w for _, w in self.weights) <= 0:
            raise ValueError(f"{argument} weights must have a positive sum; got {self.weights}")

    def _probs(self, factor: Factor) -> list[float]:
        lookup = dict(self.weights)
        return [lookup.get(c, 0.0) for c in factor.categories]

    def sample_codes(self, factor: Factor, u: torch.Tensor) -> torch.Tensor:
        """``(N,)`` uniforms to ``(N,)`` int64 category codes."""
        probs = torch.tensor(self._probs(factor), dtype=torch.float64, device=u.device)
        ends = torch.cumsum(probs, 0)
        codes = torch.searchsorted(ends, u.double() * ends[-1], right=True)
        return codes.clamp(max=len(factor.categories) - 1)

    def restrict(self, split: Split, malignant: bool) -> Categorical:
        """This distribution conditioned on one side of ``split``."""
        keep = [(c, w) for c, w in self.weights if (c in split.malignant_categories) == malignant]
        if sum(w for _, w in keep) <= 0:
            side = "malignant" if malignant else "benign"
            raise ValueError(
                f"the {side}-looking side of {split.describe()} has no mass under {self!r}"
            )
        return Categorical(tuple(keep))


@dataclass(frozen=True)
class Fixed:
    """Every sample takes ``value`` (a number, or a category name)."""

    value: float | str

    def validate(self, factor: Factor, argument: str) -> None:
        """Raise ``ValueError`` when ``value`` is outside the factor's range."""
        if factor.is_categorical:
            if self.value not in factor.categories:
                raise ValueError(
                    f"{argument} must be one of {factor.categories}; got {self.value!r}"
                )
        elif isinstance(self.value, str) or not (
            math.isfinite(self.value) and factor.low <= self.value <= factor.high
        ):
            raise ValueError(
                f"{argument} must lie in [{factor.low}, {factor.high}] "
                f"{factor.unit}; got {self.value!r}"
            )

    def restrict(self, split: Split, malignant: bool) -> Fixed:
        """Itself, when ``value`` lies on the requested side; else ``ValueError``."""
        factor = get_factor(split.factor)
        code = (
            factor.categories.index(str(self.value)) if factor.is_categorical else float(self.value)
        )
        if bool(split.malignant_side(torch.tensor([code]))[0]) != malignant:
            side = "malignant" if malignant else "benign"
            raise ValueError(
                f"the {side}-looking side of {split.describe()} has no mass under {self!r}"
            )
        return self


@dataclass(frozen=True)
class ByCategory:
    """A factor drawn from a different distribution per category of a parent factor.

    The default ``attenuation_hu`` marginal depends on ``texture``, and the acquisition
    factors (``kernel``, ``noise_hu``, ``pixel_spacing_mm``) depend on ``site``: intervening
    on the parent alone re-draws the child from the same exogenous ``u`` in the new
    category's distribution (a structural causal model). Choices are :class:`Uniform` for a
    continuous child, :class:`Categorical` or :class:`Fixed` for a categorical one.
    """

    parent: str
    choices: tuple[tuple[str, Uniform | Categorical | Fixed], ...]

    def __init__(
        self,
        parent: str,
        choices: Mapping[str, Uniform | Categorical | Fixed]
        | tuple[tuple[str, Uniform | Categorical | Fixed], ...],
    ) -> None:
        object.__setattr__(self, "parent", parent)
        pairs = tuple(choices.items()) if isinstance(choices, Mapping) else tuple(choices)
        object.__setattr__(self, "choices", pairs)

    def validate(self, factor: Factor, argument: str) -> None:
        """Every parent category needs a valid distribution inside the factor's range."""
        parent = get_factor(self.parent, argument=f"{argument}.parent")
        if not parent.is_categorical:
            raise ValueError(f"{argument}.parent must be a categorical factor; got {self.parent!r}")
        names = [c for c, _ in self.choices]
        if sorted(names) != sorted(parent.categories):
            raise ValueError(
                f"{argument}.choices must have one entry per category "
                f"{parent.categories}; got {tuple(names)}"
            )
        allowed = (Categorical, Fixed) if factor.is_categorical else (Uniform, Fixed)
        for name, dist in self.choices:
            if not isinstance(dist, allowed):
                kinds = " or ".join(k.__name__ for k in allowed)
                raise ValueError(f"{argument}.choices[{name!r}] must be a {kinds}; got {dist!r}")
            dist.validate(factor, f"{argument}.choices[{name!r}]")

    def sample(
        self, u: torch.Tensor, parents: Mapping[str, torch.Tensor], factor: Factor | None = None
    ) -> torch.Tensor:
        """Draw each sample from the distribution of its parent's category.

        ``factor`` (the child) is needed when the choices are categorical.
        """
        parent = get_factor(self.parent)
        codes = parents[self.parent]
        categorical = factor is not None and factor.is_categorical
        out = torch.empty_like(u, dtype=torch.int64 if categorical else u.dtype)
        lookup = dict(self.choices)
        for code, name in enumerate(parent.categories):
            sel = codes == code
            if bool(sel.any()):
                out[sel] = draw(lookup[name], factor, u[sel], {})
        return out


def draw(
    dist: Uniform | LogUniform | Categorical | Fixed | ByCategory,
    factor: Factor | None,
    u: torch.Tensor,
    parents: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Values of ``factor`` from exogenous uniforms ``u``: floats, or int64 category codes.

    ``factor`` may be ``None`` only for a continuous distribution (:class:`Uniform`, or a
    numeric :class:`Fixed`).
    """
    if isinstance(dist, Categorical):
        if factor is None:
            raise TypeError("a Categorical distribution needs its factor to draw codes")
        return dist.sample_codes(factor, u)
    if isinstance(dist, Fixed):
        if factor is not None and factor.is_categorical:
            return torch.full_like(u, factor.categories.index(str(dist.value)), dtype=torch.int64)
        return torch.full_like(u, float(dist.value))
    if isinstance(dist, ByCategory):
        return dist.sample(u, parents, factor)
    return dist.sample(u, parents)


#: Any marginal a :class:`~nodulebench.NoduleSpec` accepts.
Distribution = Union[Uniform, LogUniform, Categorical, Fixed, ByCategory]  # noqa: UP007
