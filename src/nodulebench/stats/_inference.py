"""Intervals over seeds, paired comparisons and Holm's correction (see :mod:`nodulebench.stats`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Literal

from nodulebench._validation import check_choice, check_in_range, check_int

__all__ = [
    "MeanInterval",
    "PairResult",
    "PairedComparison",
    "compare_all",
    "holm",
    "mean_interval",
    "paired_comparison",
    "sign_flip_test",
]

PairedTest = Literal["t", "sign-flip"]
"""The paired tests: Student's t on the differences, or the exact sign-flip permutation test."""


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


def _paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] - b[i]`` after checking both are finite, equally long and hold ``n >= 2``."""
    first = _values("a", a, 2)
    second = _values("b", b, 2)
    if len(first) != len(second):
        raise ValueError(
            f"a and b must hold one value per seed each; got {len(first)} and {len(second)} values"
        )
    return [x - y for x, y in zip(first, second, strict=True)]


def _spread(differences: Sequence[float]) -> tuple[float, float]:
    """Mean and sample deviation; a deviation lost in rounding is returned as exactly 0."""
    n = len(differences)
    mean = math.fsum(differences) / n
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / (n - 1))
    if std <= 1e-12 * max(1.0, abs(mean)):
        std = 0.0
    return mean, std


def sign_flip_test(
    a: Sequence[float],
    b: Sequence[float],
    *,
    max_exact: int = 20,
    n_resamples: int = 100_000,
    seed: int = 0,
) -> float:
    r"""Two-sided p-value of the sign-flip permutation test of paired values.

    Under the null hypothesis that ``a`` and ``b`` are exchangeable within each seed, every
    difference :math:`d_i = a_i - b_i` is as likely to have come out with the other sign.
    The p-value is the share of the :math:`2^n` sign assignments :math:`s \in \{\pm1\}^n`
    whose statistic is at least the observed one,

    .. math::

        p = 2^{-n}\,\#\Big\{s : \Big|\sum_i s_i |d_i|\Big| \ge \Big|\sum_i d_i\Big|\Big\}.

    It needs no variance, so differences without spread are no special case, and it is
    monotone: moving a difference further from zero on the side of the mean never raises
    ``p``. Its smallest value is :math:`2^{1-n}` (0.0625 for 5 seeds), the honest floor of a
    test that assumes nothing about the differences' distribution. For ``n > max_exact``
    the sign assignments are sampled (``n_resamples`` of them, from a generator seeded with
    ``seed``; the global random state is not used) and :math:`p = (1 + k) / (1 + R)`.

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        max_exact: the largest ``n`` enumerated exactly (``2^n`` assignments), ``<= 24``.
        n_resamples: sampled assignments when ``n > max_exact``.
        seed: seed of the sampling generator.

    Returns:
        The two-sided p-value in ``(0, 1]``.

    Raises:
        ValueError: If the lengths differ, ``n < 2``, a value is not finite, or an option
            is out of range.
        TypeError: If an input is not a sequence of real numbers.

    Example:
        >>> sign_flip_test([0.9, 0.8, 0.85, 0.9, 0.95], [0.74, 0.64, 0.69, 0.74, 0.79])
        0.0625
    """
    check_int("max_exact", max_exact, 1, 24)
    check_int("n_resamples", n_resamples, 1)
    check_int("seed", seed, 0)
    differences = _paired_differences(a, b)
    n = len(differences)
    import numpy as np

    magnitude = np.abs(np.asarray(differences, dtype=np.float64))
    observed = abs(math.fsum(differences))
    # Sums that equal the observed one up to rounding count as "at least as extreme".
    tolerance = 1e-9 * max(float(magnitude.sum()), 1e-300)
    if observed <= tolerance:
        return 1.0
    if n <= max_exact:
        extreme = 0
        bits = np.arange(n, dtype=np.int64)
        for start in range(0, 2**n, 1 << 14):  # blocks of 16,384 assignments: O(n) memory
            codes = np.arange(start, min(start + (1 << 14), 2**n), dtype=np.int64)
            signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1)
            extreme += int(np.sum(np.abs(signs @ magnitude) >= observed - tolerance))
        return float(extreme / 2**n)
    generator = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_resamples, 4096):
        rows = min(4096, n_resamples - start)
        signs = generator.choice(np.array([-1.0, 1.0]), size=(rows, n))
        extreme += int(np.sum(np.abs(signs @ magnitude) >= observed - tolerance))
    return (1 + extreme) / (1 + n_resamples)


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    test: PairedTest = "t",
) -> PairedComparison:
    r"""Paired comparison of ``a`` with ``b``, where ``a[i]`` and ``b[i]`` share a seed.

    Two losses trained on the same seed see the same data, so the seed's luck is shared
    and the differences :math:`d_i = a_i - b_i` are compared with zero. With ``test="t"``
    (the default) this is the paired t-test, :math:`t = \bar d / (s_d / \sqrt n)` on
    :math:`n - 1` degrees of freedom. Differences that are all equal have no spread: the
    t statistic is then infinite and ``p = 0`` for a non-zero mean (the limit of ever less
    noisy differences of that mean, so the p-value never rises as the differences agree
    more) and ``p = 1`` when no pair differs. The t-test trusts the differences to be
    roughly normal; ``test="sign-flip"`` takes its p-value from the exact
    :func:`sign_flip_test` instead, which assumes only that the signs are exchangeable
    under the null and cannot go below :math:`2^{1-n}`. The interval is Student's in both
    cases (of width zero without spread).

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        confidence: coverage of the difference's interval, in ``(0, 1)``.
        test: ``"t"`` or ``"sign-flip"``, the test that gives the p-value.

    Returns:
        A :class:`PairedComparison`.

    Raises:
        ValueError: If the lengths differ, ``n < 2``, a value is not finite, or ``test`` is
            unknown.
        TypeError: If an input is not a sequence of real numbers.

    Example:
        >>> c = paired_comparison([0.90, 0.88, 0.91, 0.89, 0.92], [0.85, 0.84, 0.85, 0.86, 0.86])
        >>> round(c.difference, 3), c.p_value < 0.05
        (0.048, True)
        >>> paired_comparison([0.90, 0.88, 0.91, 0.89, 0.92], [0.85, 0.84, 0.85, 0.86, 0.86],
        ...                   test="sign-flip").p_value
        0.0625
    """
    check_in_range("confidence", confidence, 0.0, 1.0, inclusive=False)
    check_choice("test", test, ("t", "sign-flip"))
    differences = _paired_differences(a, b)
    n = len(differences)
    mean, std = _spread(differences)
    no_difference = std == 0.0 and abs(mean) <= 1e-12
    sign_flip = None if test == "t" or no_difference else sign_flip_test(a, b)
    if std == 0.0:
        effect = 0.0 if no_difference else math.copysign(math.inf, mean)
        p_value = 1.0 if no_difference else 0.0
        p_value = p_value if sign_flip is None else sign_flip
        return PairedComparison(mean, mean, mean, effect, p_value, n, confidence)
    from scipy import stats

    standard_error = std / math.sqrt(n)
    if sign_flip is None:
        p_value = float(2 * stats.t.sf(abs(mean / standard_error), n - 1))
    else:
        p_value = sign_flip
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
    conditions: Mapping[str, Sequence[float]],
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    test: PairedTest = "t",
) -> list[PairResult]:
    """Paired comparisons of every pair of conditions, Holm-corrected as one family.

    Args:
        conditions: ``{name: values}``, every list one value per seed in the same seed order.
        alpha: family-wise error rate, in ``(0, 1)``.
        confidence: coverage of each difference's interval.
        test: the paired test of each pair (see :func:`paired_comparison`).

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
        paired_comparison(conditions[a], conditions[b], confidence=confidence, test=test)
        for a, b in pairs
    ]
    adjusted = holm([r.p_value for r in results])
    return [
        PairResult(a, b, result, p, p <= alpha)
        for (a, b), result, p in zip(pairs, results, adjusted, strict=True)
    ]
