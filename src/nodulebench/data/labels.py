"""Label rules: which factors make a nodule malignant.

A rule maps the factor table to labels. A :class:`~nodulebench.data.Split` on one factor
(the default, ``spiculation > 0.5``) also lets the spec allocate exact class counts; a
:class:`LinearLabelRule` combines factors; a :class:`LogisticLabelRule` makes a nodule
malignant with a probability, its coin an exogenous uniform of the sample (so the label is
still a pure function of ``(spec, seed, index)``, and an intervention keeps the coin); a
:class:`LabelFunction` wraps any callable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Union

import torch

from .distributions import Split
from .factors import FACTORS, get_factor

__all__ = [
    "BROCK_COEFFICIENTS",
    "AnyLabelRule",
    "BrockLabelRule",
    "LabelFunction",
    "LabelRule",
    "LinearLabelRule",
    "LogisticLabelRule",
    "callable_digest",
    "rule_inputs",
]

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

    def __init__(
        self, weights: Mapping[str, float] | tuple[tuple[str, float], ...], threshold: float
    ) -> None:
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
                raise ValueError(f"{argument}.weights must name continuous factors; got {name!r}")
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


def _normalised(factors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    info = FACTORS[name]
    return (factors[name].double() - info.low) / (info.high - info.low)


@dataclass(frozen=True)
class LogisticLabelRule:
    r"""Malignant with a probability that is logistic in several factors.

    .. math:: p = \sigma\Big(b + \sum_f w_f \, \frac{x_f - \mathrm{low}_f}
              {\mathrm{high}_f - \mathrm{low}_f} + \sum_{(f, c)} w_{f,c} [x_f = c]\Big),
              \qquad y = [u < p]

    where ``u`` is the sample's exogenous label coin (uniform, from the counter-based RNG).

    Attributes:
        weights: ``(continuous factor, weight)`` pairs (a mapping is accepted).
        category_weights: ``(categorical factor, category, weight)`` triples, e.g.
            ``(("texture", "part-solid", 1.0),)`` (a mapping ``{(factor, category): w}`` is
            accepted).
        bias: the intercept ``b``.

    Example:
        >>> rule = LogisticLabelRule({"diameter_mm": 4.0, "spiculation": 6.0}, bias=-5.0)
        >>> rule.describe()
        'sigmoid(-5 + 4*norm(diameter_mm) + 6*norm(spiculation))'
    """

    weights: tuple[tuple[str, float], ...]
    category_weights: tuple[tuple[str, str, float], ...]
    bias: float

    def __init__(
        self,
        weights: Mapping[str, float] | tuple[tuple[str, float], ...],
        category_weights: Mapping[tuple[str, str], float] | tuple[tuple[str, str, float], ...] = (),
        bias: float = 0.0,
    ) -> None:
        pairs = tuple(weights.items()) if isinstance(weights, Mapping) else tuple(weights)
        triples = (
            tuple((f, c, w) for (f, c), w in category_weights.items())
            if isinstance(category_weights, Mapping)
            else tuple(category_weights)
        )
        object.__setattr__(self, "weights", pairs)
        object.__setattr__(self, "category_weights", triples)
        object.__setattr__(self, "bias", bias)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Factors the rule reads."""
        names = [name for name, _ in self.weights] + [f for f, _, _ in self.category_weights]
        return tuple(dict.fromkeys(names))

    def validate(self, argument: str) -> None:
        """Raise ``ValueError`` on unknown factors or categories and non-finite numbers."""
        if not self.weights and not self.category_weights:
            raise ValueError(f"{argument} must weigh at least one factor; got no weights")
        for name, w in self.weights:
            if get_factor(name, argument=f"{argument}.weights").is_categorical:
                raise ValueError(
                    f"{argument}.weights must name continuous factors (use "
                    f"category_weights for categories); got {name!r}"
                )
            if not math.isfinite(w):
                raise ValueError(f"{argument}.weights must be finite; got {w!r} for {name}")
        for name, category, w in self.category_weights:
            info = get_factor(name, argument=f"{argument}.category_weights")
            if category not in info.categories:
                raise ValueError(
                    f"{argument}.category_weights for {name} must name one of "
                    f"{info.categories}; got {category!r}"
                )
            if not math.isfinite(w):
                raise ValueError(
                    f"{argument}.category_weights must be finite; got {w!r} for {name}={category}"
                )
        if not math.isfinite(self.bias):
            raise ValueError(f"{argument}.bias must be finite; got {self.bias!r}")

    def probability(self, factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` float64 probability of malignancy."""
        n = next(iter(factors.values())).shape[0]
        logit = torch.full((n,), float(self.bias), dtype=torch.float64)
        for name, w in self.weights:
            logit = logit + w * _normalised(factors, name).cpu()
        for name, category, w in self.category_weights:
            code = FACTORS[name].categories.index(category)
            logit = logit + w * (factors[name].cpu() == code).double()
        return torch.sigmoid(logit)

    def __call__(
        self, factors: Mapping[str, torch.Tensor], coin: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N,)`` int64 labels ``[coin < p]``; ``coin`` is ``(N,)`` uniforms in ``(0, 1)``."""
        if coin is None:
            raise ValueError(
                "coin must be the samples' (N,) label coins for a "
                "LogisticLabelRule (nodulebench.data.sampling.label_coins); "
                "got None"
            )
        return (coin.double().cpu() < self.probability(factors)).long()

    def describe(self) -> str:
        """Human-readable rule."""
        terms = (
            [f"{self.bias:g}"]
            + [f"{w:g}*norm({f})" for f, w in self.weights]
            + [f"{w:g}*[{f}={c}]" for f, c, w in self.category_weights]
        )
        return f"sigmoid({' + '.join(terms)})"


#: Coefficients of the Brock (PanCan) full model with spiculation, McWilliams et al.,
#: "Probability of cancer in pulmonary nodules detected on first screening CT", N. Engl. J.
#: Med. 369:910-919 (2013), as tabulated with the other published nodule models.
BROCK_COEFFICIENTS: Mapping[str, float] = MappingProxyType(
    {
        "intercept": -6.7892,
        "age_per_year_minus_62": 0.0287,
        "female": 0.6011,
        "family_history": 0.2961,
        "emphysema": 0.2953,
        "size_transformed": -5.3854,  # times (diameter_mm / 10) ** -0.5 - 1.58113883
        "part_solid": 0.377,
        "non_solid": -0.1276,
        "upper_lobe": 0.6581,
        "nodule_count_minus_4": -0.0824,
        "spiculation": 0.7729,
    }
)


@dataclass(frozen=True, init=False)
class BrockLabelRule(LogisticLabelRule):
    r"""Malignant with the probability of the Brock model (McWilliams et al., NEJM 2013).

    The full model with spiculation, with its published coefficients
    (:data:`~nodulebench.data.labels.BROCK_COEFFICIENTS`) read over the generator's
    factors, so that size is a genuine cause of malignancy:

    .. math:: \mathrm{logit}\,p = -6.7892 - 5.3854\,ig((d / 10)^{-1/2} - 1.5811ig)
              + 0.377\,[	ext{part-solid}] - 0.1276\,[	ext{ground-glass}]
              + 0.7729\,[s > s_0] + c

    with ``d = diameter_mm``, ``s = spiculation`` (spiculated above ``s_0``), and the
    patient's terms ``c`` (age, sex, family history, emphysema, upper lobe, nodule count),
    which the generator does not draw, held at the constants given here (defaults: the
    model's reference patient, age 62, male, no history, no emphysema, not in an upper
    lobe, four nodules). The coin is the sample's exogenous label coin, as for every
    :class:`LogisticLabelRule`. The class balance follows from the factors: with the
    default marginals few nodules are malignant (the model was fitted on screening
    nodules, 5.5 % cancers).

    Attributes:
        spiculated_above: ``spiculation`` above which a nodule counts as spiculated.
        age: patient age in years.
        female: the patient is female.
        family_history: a family history of lung cancer.
        emphysema: emphysema on the scan.
        upper_lobe: the nodule lies in an upper lobe.
        nodule_count: nodules on the scan, ``>= 1``.

    Example:
        >>> rule = BrockLabelRule()
        >>> factors = {"diameter_mm": torch.tensor([10.0]), "texture": torch.tensor([0]),
        ...            "spiculation": torch.tensor([0.9])}
        >>> round(float(rule.probability(factors)[0]), 4)
        0.0528
    """

    spiculated_above: float = 0.5
    age: float = 62.0
    female: bool = False
    family_history: bool = False
    emphysema: bool = False
    upper_lobe: bool = False
    nodule_count: int = 4

    def __init__(
        self,
        *,
        spiculated_above: float = 0.5,
        age: float = 62.0,
        female: bool = False,
        family_history: bool = False,
        emphysema: bool = False,
        upper_lobe: bool = False,
        nodule_count: int = 4,
    ) -> None:
        c = BROCK_COEFFICIENTS
        super().__init__(
            {},
            (
                ("texture", "part-solid", c["part_solid"]),
                ("texture", "ground-glass", c["non_solid"]),
            ),
            c["intercept"],
        )
        object.__setattr__(self, "spiculated_above", spiculated_above)
        object.__setattr__(self, "age", age)
        object.__setattr__(self, "female", female)
        object.__setattr__(self, "family_history", family_history)
        object.__setattr__(self, "emphysema", emphysema)
        object.__setattr__(self, "upper_lobe", upper_lobe)
        object.__setattr__(self, "nodule_count", nodule_count)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The factors the rule reads (diameter, texture and spiculation)."""
        return ("diameter_mm", "texture", "spiculation")

    def validate(self, argument: str) -> None:
        """Raise ``ValueError``/``TypeError`` on out-of-range patient terms or threshold."""
        if not (
            isinstance(self.spiculated_above, (int, float)) and 0.0 <= self.spiculated_above < 1.0
        ):
            raise ValueError(
                f"{argument}.spiculated_above must be a number in [0, 1); got "
                f"{self.spiculated_above!r}"
            )
        if not (isinstance(self.age, (int, float)) and 18.0 <= self.age <= 110.0):
            raise ValueError(
                f"{argument}.age must be a number of years in [18, 110]; got {self.age!r}"
            )
        for name in ("female", "family_history", "emphysema", "upper_lobe"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{argument}.{name} must be a bool; got {type(getattr(self, name)).__name__}"
                )
        count = self.nodule_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{argument}.nodule_count must be an int >= 1; got {count!r}")

    def patient_logit(self) -> float:
        """The constant part of the logit: intercept and the patient's terms."""
        c = BROCK_COEFFICIENTS
        return (
            c["intercept"]
            + c["age_per_year_minus_62"] * (self.age - 62.0)
            + c["female"] * self.female
            + c["family_history"] * self.family_history
            + c["emphysema"] * self.emphysema
            + c["upper_lobe"] * self.upper_lobe
            + c["nodule_count_minus_4"] * (self.nodule_count - 4)
        )

    def probability(self, factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` float64 Brock probability of malignancy of each nodule."""
        c = BROCK_COEFFICIENTS
        diameter = factors["diameter_mm"].cpu().double()
        logit = self.patient_logit() + c["size_transformed"] * (
            (diameter / 10.0) ** -0.5 - (0.4**-0.5)
        )
        for name, category, w in self.category_weights:
            code = FACTORS[name].categories.index(category)
            logit = logit + w * (factors[name].cpu() == code).double()
        spiculated = factors["spiculation"].cpu().double() > self.spiculated_above
        return torch.sigmoid(logit + c["spiculation"] * spiculated.double())

    def describe(self) -> str:
        """Human-readable rule."""
        return (
            f"Brock model (McWilliams 2013; spiculated iff spiculation > "
            f"{self.spiculated_above:g}, patient terms {self.patient_logit():+.4f})"
        )


def callable_digest(fn: object) -> str:
    """A digest of what a callable computes, for fingerprints.

    It covers the module, name, bytecode, constants and closure values, so two functions
    under one name differ when their code or captured values do.
    """
    parts = [getattr(fn, "__module__", ""), getattr(fn, "__qualname__", type(fn).__qualname__)]
    code = getattr(fn, "__code__", None)
    if code is not None:
        parts += [code.co_code.hex(), repr(code.co_consts), repr(code.co_names)]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            parts.append(repr(cell.cell_contents))
        except ValueError:  # an empty cell
            parts.append("<empty>")
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LabelFunction:
    """A user-supplied label rule: ``fn(factors) -> (N,) labels in {0, 1}``.

    Attributes:
        fn: maps the factor dict (``(N,)`` tensors) to ``(N,)`` integer labels.
        inputs: the factors ``fn`` reads (shortcuts must not be among them).
        name: a stable name, shown by ``describe``; the spec's fingerprint (cache keys) also
            digests the function's code and closure.
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
            raise ValueError(
                f"label function {self.name!r} must return ({n},) values in "
                f"{{0, 1}}; got shape {tuple(labels.shape)}"
            )
        return labels.long()

    def describe(self) -> str:
        """Human-readable rule."""
        return f"{self.name}({', '.join(self.inputs)})"


AnyLabelRule = Union[Split, LinearLabelRule, LogisticLabelRule, LabelFunction]  # noqa: UP007


def rule_inputs(rule: AnyLabelRule) -> tuple[str, ...]:
    """Factors a label rule reads."""
    return (rule.factor,) if isinstance(rule, Split) else rule.inputs
