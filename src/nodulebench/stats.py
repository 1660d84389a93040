r"""Statistics for results over a few seeds: intervals, paired comparisons, group accuracy.

A study that trains each model on a handful of seeds has few degrees of freedom, so every
number it reports carries an interval, and a difference between two losses is claimed only
where a test rejects. The functions here are small and return plain dataclasses:

* :func:`mean_interval`: mean over seeds with a Student-t confidence interval.
* :func:`paired_comparison`: the paired t-test of two losses trained on the same data
  (same seed), with the mean difference, its interval and the standardized effect size.
* :func:`holm`: Holm's step-down correction of several p-values.
* :func:`compare_all`: every pair of a set of conditions, Holm-corrected.
* :func:`group_accuracy`: accuracy per group and the worst group (Sagawa et al., 2020).

scipy is imported inside the functions that need it, so ``import nodulebench`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import torch

from nodulebench._validation import check_in_range, check_integer_tensor, check_ndim

__all__ = [
    "GroupAccuracy",
    "MeanInterval",
    "PairResult",
    "PairedComparison",
    "compare_all",
    "group_accuracy",
    "holm",
    "mean_interval",
    "paired_comparison",
]


def _values(name: str, values: Sequence[float], minimum: int) -> list[float]:
    """Finite floats from a sequence of real numbers, at least ``minimum`` of them."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of real numbers; got {type(values).__name__}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must hold real numbers; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must hold finite numbers; got {value!r}")
        out.append(float(value))
    if len(out) < minimum:
        raise ValueError(f"{name} must hold at least {minimum} value(s); got {len(out)}")
    return out


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


@dataclass(frozen=True)
class MeanInterval:
    """A mean over ``n`` values and its two-sided confidence interval.

    Attributes:
        mean: the sample mean.
        low: lower end of the interval; ``None`` for a single value (no spread to
            estimate: an interval of width zero would claim a certainty one seed cannot give).
        high: upper end of the interval; ``None`` for a single value.
        std: sample standard deviation (``n - 1`` in the denominator); ``None`` for one value.
        n: number of values.
        confidence: the interval's nominal coverage, e.g. ``0.95``.
    """

    mean: float
    low: float | None
    high: float | None
    std: float | None
    n: int
    confidence: float

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (``None`` for a single value)."""
        return None if self.high is None else self.high - self.mean

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON and CSV friendly)."""
        return asdict(self)


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> MeanInterval:
    r"""Mean with a Student-t confidence interval, for values from independent seeds.

    .. math::
        \bar x \pm t_{n-1,\,(1+c)/2}\,\frac{s}{\sqrt n}

    Args:
        values: ``n >= 1`` finite numbers, one per seed.
        confidence: nominal coverage ``c`` in ``(0, 1)``.

    Returns:
        A :class:`MeanInterval`; with one value its interval and deviation are ``None``.

    Raises:
        ValueError: If ``values`` is empty or not finite, or ``confidence`` is outside (0, 1).
        TypeError: If ``values`` is not a sequence of real numbers.

    Example:
        >>> r = mean_interval([0.80, 0.84, 0.82, 0.86, 0.78])
        >>> round(r.mean, 3), round(r.low, 3), round(r.high, 3)
        (0.82, 0.781, 0.859)
    """
    check_in_range("confidence", confidence, 0.0, 1.0, inclusive=False)
    data = _values("values", values, 1)
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return MeanInterval(mean, None, None, None, 1, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, std, n, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """A paired comparison of condition ``a`` with condition ``b`` over the same seeds.

    Attributes:
        difference: mean of ``a - b`` over the pairs.
        low: lower end of the difference's confidence interval.
        high: upper end of the difference's confidence interval.
        effect_size: the standardized mean difference :math:`d_z` (mean difference over
            the deviation of the differences); ``inf`` with the sign of the difference when
            every pair differs by the same non-zero amount, ``0`` when no pair differs.
        p_value: two-sided p-value of the paired t-test (uncorrected).
        n: number of pairs.
        confidence: the interval's nominal coverage.
    """

    difference: float
    low: float
    high: float
    effect_size: float
    p_value: float
    n: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def paired_comparison(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> PairedComparison:
    r"""Paired t-test of ``a`` against ``b``, where ``a[i]`` and ``b[i]`` share a seed.

    Two losses trained on the same seed see the same data, so the seed's luck is shared
    and the differences :math:`d_i = a_i - b_i` are compared with zero:
    :math:`t = \bar d / (s_d / \sqrt n)` on :math:`n - 1` degrees of freedom. Pairs whose
    differences are all equal have no spread and no t statistic (accuracies on a finite test
    set are discrete, so this happens): the p-value is then that of the exact two-sided sign
    test, :math:`2 \cdot 2^{-n}` when all differ by the same non-zero amount, 1 when none
    differs.

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        confidence: coverage of the difference's interval, in ``(0, 1)``.

    Returns:
        A :class:`PairedComparison`.

    Raises:
        ValueError: If the lengths differ, ``n < 2``, or a value is not finite.
        TypeError: If an input is not a sequence of real numbers.

    Example:
        >>> c = paired_comparison([0.90, 0.88, 0.91, 0.89, 0.92], [0.85, 0.84, 0.85, 0.86, 0.86])
        >>> round(c.difference, 3), c.p_value < 0.05
        (0.048, True)
    """
    check_in_range("confidence", confidence, 0.0, 1.0, inclusive=False)
    first = _values("a", a, 2)
    second = _values("b", b, 2)
    if len(first) != len(second):
        raise ValueError(
            f"a and b must hold one value per seed each; got {len(first)} and {len(second)} values"
        )
    differences = [x - y for x, y in zip(first, second, strict=True)]
    n = len(differences)
    mean = math.fsum(differences) / n
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / (n - 1))
    if std <= 1e-12 * max(1.0, abs(mean)):
        # No spread: the t statistic is undefined. Fall back on the exact sign test, which
        # needs no variance: n equal non-zero differences have p = 2 * 2^-n.
        no_difference = abs(mean) <= 1e-12
        effect = 0.0 if no_difference else math.copysign(math.inf, mean)
        p_value = 1.0 if no_difference else min(1.0, 2.0 ** (1 - n))
        return PairedComparison(mean, mean, mean, effect, p_value, n, confidence)
    from scipy import stats

    standard_error = std / math.sqrt(n)
    p_value = float(2 * stats.t.sf(abs(mean / standard_error), n - 1))
    half = _t_quantile(confidence, n - 1) * standard_error
    return PairedComparison(mean, mean - half, mean + half, mean / std, p_value, n, confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    r"""Holm's step-down adjusted p-values (Holm, 1979), in the input's order.

    With the p-values sorted :math:`p_{(1)} \le \dots \le p_{(m)}`, the adjusted values are
    :math:`\tilde p_{(k)} = \max_{j \le k} \min(1, (m - j + 1)\,p_{(j)})`. Rejecting where
    :math:`\tilde p \le \alpha` controls the family-wise error rate at :math:`\alpha`
    under any dependence between the tests.

    Args:
        p_values: p-values in ``[0, 1]``.

    Returns:
        The adjusted p-values, same length and order.

    Raises:
        ValueError: If a p-value lies outside ``[0, 1]``.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    values = _values("p_values", p_values, 0)
    for p in values:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values must lie in [0, 1]; got {p!r}")
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairResult:
    """One pair of :func:`compare_all`: the comparison and its Holm-adjusted verdict.

    Attributes:
        a: the first condition's name.
        b: the second condition's name.
        comparison: the paired comparison of ``a`` against ``b``.
        adjusted_p: Holm-adjusted p-value within the family of all pairs.
        rejected: whether ``adjusted_p <= alpha``: the conditions differ.
    """

    a: str
    b: str
    comparison: PairedComparison
    adjusted_p: float
    rejected: bool

    @property
    def better(self) -> str | None:
        """The condition with the larger mean where the test rejects, else ``None``."""
        if not self.rejected:
            return None
        return self.a if self.comparison.difference > 0 else self.b


def compare_all(
    conditions: Mapping[str, Sequence[float]], *, alpha: float = 0.05, confidence: float = 0.95
) -> list[PairResult]:
    """Paired comparisons of every pair of conditions, Holm-corrected as one family.

    Args:
        conditions: ``{name: values}``, every list one value per seed in the same seed order.
        alpha: family-wise error rate, in ``(0, 1)``.
        confidence: coverage of each difference's interval.

    Returns:
        One :class:`PairResult` per unordered pair, in the mapping's order.

    Raises:
        ValueError: If the lists differ in length or hold fewer than two values.

    Example:
        >>> pairs = compare_all({"a": [0.9, 0.91, 0.92], "b": [0.9, 0.93, 0.91]})
        >>> [(p.a, p.b, p.rejected) for p in pairs]
        [('a', 'b', False)]
    """
    check_in_range("alpha", alpha, 0.0, 1.0, inclusive=False)
    names = list(conditions)
    pairs = list(combinations(names, 2))
    results = [
        paired_comparison(conditions[a], conditions[b], confidence=confidence) for a, b in pairs
    ]
    adjusted = holm([r.p_value for r in results])
    return [
        PairResult(a, b, result, p, p <= alpha)
        for (a, b), result, p in zip(pairs, results, adjusted, strict=True)
    ]


@dataclass(frozen=True)
class GroupAccuracy:
    """Accuracy per group and the worst of them.

    Attributes:
        worst: the lowest accuracy over the groups present.
        worst_group: the name of that group (the first in ``names`` order on ties).
        per_group: ``{group name: accuracy}`` of every group present.
        counts: ``{group name: number of samples}`` of every group present.
    """

    worst: float
    worst_group: str
    per_group: dict[str, float]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def group_accuracy(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    names: Sequence[str] | None = None,
) -> GroupAccuracy:
    """Accuracy within each group and the worst-group accuracy (Sagawa et al., 2020).

    Worst-group accuracy is the accuracy of the group the classifier serves worst; for a
    shortcut it is usually a group where the shortcut disagrees with the label. Groups
    absent from the data are left out (their accuracy is undefined, not zero).

    Args:
        predictions: ``(N,)`` predicted classes (integers).
        labels: ``(N,)`` true classes (integers).
        groups: ``(N,)`` group index of each sample, in ``[0, G)``.
        names: ``G`` group names (default: ``"0"``, ``"1"``, ...).

    Returns:
        A :class:`GroupAccuracy`.

    Raises:
        ValueError: If shapes differ, ``N = 0``, or a group index has no name.
        TypeError: If an input is not an integer tensor.

    Example:
        >>> r = group_accuracy(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0]),
        ...                    torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
        >>> r.worst, r.worst_group, r.per_group
        (0.5, 'b', {'a': 1.0, 'b': 0.5, 'c': 1.0})
    """
    for name, tensor in (("predictions", predictions), ("labels", labels), ("groups", groups)):
        check_ndim(name, tensor, (1,), "(N,)")
        check_integer_tensor(name, tensor)
    n = predictions.shape[0]
    if labels.shape[0] != n or groups.shape[0] != n:
        raise ValueError(
            f"predictions, labels and groups must have the same length; got "
            f"{n}, {labels.shape[0]} and {groups.shape[0]}"
        )
    if n == 0:
        raise ValueError("predictions must hold at least one sample; got N = 0")
    g = groups.detach().cpu().long()
    if int(g.min()) < 0:
        raise ValueError(f"groups must be >= 0; got {int(g.min())}")
    count = int(g.max()) + 1
    if names is None:
        names = [str(i) for i in range(count)]
    elif len(names) < count:
        raise ValueError(
            f"names must name every group index up to {count - 1}; got {len(names)} name(s)"
        )
    correct = (predictions.detach().cpu() == labels.detach().cpu()).double()
    totals = torch.bincount(g, minlength=len(names))
    hits = torch.bincount(g, weights=correct, minlength=len(names))
    per_group = {names[k]: float(hits[k] / totals[k]) for k in range(len(names)) if totals[k] > 0}
    counts = {names[k]: int(totals[k]) for k in range(len(names)) if totals[k] > 0}
    worst_group = min(per_group, key=lambda k: per_group[k])
    return GroupAccuracy(per_group[worst_group], worst_group, per_group, counts)
