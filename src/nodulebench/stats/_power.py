"""Power, sample size, equivalence and effect size of paired designs (:mod:`nodulebench.stats`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from nodulebench._validation import check_in_range, check_int, check_positive
from nodulebench.stats._inference import (
    PairedComparison,
    PairedTest,
    _paired_differences,
    _spread,
    paired_comparison,
)

__all__ = [
    "EffectSize",
    "Equivalence",
    "Verdict",
    "equivalence_test",
    "minimal_detectable_difference",
    "paired_effect_size",
    "paired_power",
    "sample_size",
    "verdict",
]


def _check_design(alpha: float, comparisons: int) -> float:
    """The per-comparison level ``alpha / comparisons`` (Bonferroni's bound on Holm)."""
    check_in_range("alpha", alpha, 0.0, 1.0, inclusive=False)
    check_int("comparisons", comparisons, 1)
    return alpha / comparisons


def _root(function: Callable[[float], float], low: float, high: float) -> float:
    """A root of an increasing ``function`` on ``[low, high]``, widening ``high`` as needed."""
    from scipy import optimize

    while function(high) < 0:
        low, high = high, 2 * high + 1
    return float(optimize.brentq(function, low, high, xtol=1e-12, rtol=1e-12))


def paired_power(
    difference: float, sd: float, n: int, *, alpha: float = 0.05, comparisons: int = 1
) -> float:
    r"""Power of the two-sided paired t-test to detect a true mean difference.

    With :math:`\delta` the true mean of the differences, :math:`\sigma` their deviation
    and :math:`t^* = t_{n-1,\,1-\alpha'/2}`, :math:`\alpha' = \alpha / m` for ``m``
    comparisons, the statistic follows the noncentral t distribution with
    noncentrality :math:`\lambda = \sqrt n\,\delta / \sigma` and

    .. math::

        \text{power} = P(T_{n-1,\lambda} > t^*) + P(T_{n-1,\lambda} < -t^*).

    ``alpha / comparisons`` is Bonferroni's level, the smallest that Holm's step-down
    procedure applies to any member of a family of ``m`` comparisons, so the power under
    Holm is at least this.

    Args:
        difference: the true mean difference :math:`\delta` (any sign).
        sd: the deviation :math:`\sigma > 0` of the paired differences (not of each arm).
        n: number of pairs (seeds), ``>= 2``.
        alpha: family-wise significance level in ``(0, 1)``.
        comparisons: number ``m >= 1`` of comparisons in the Holm family.

    Returns:
        The probability of rejecting, in ``[alpha / comparisons, 1]``.

    Raises:
        ValueError: If ``sd <= 0``, ``n < 2``, ``alpha`` is outside (0, 1), ``comparisons
            < 1``, or ``difference`` is not finite.
        TypeError: If an argument has the wrong type.

    Example:
        >>> round(paired_power(0.5, 1.0, 34), 3)
        0.808
    """
    check_in_range("difference", difference, -math.inf, math.inf, inclusive=False)
    check_positive("sd", sd)
    check_int("n", n, 2)
    level = _check_design(alpha, comparisons)
    from scipy import stats

    dof = n - 1
    critical = stats.t.ppf(1 - level / 2, dof)
    # Power is even in the difference. scipy's noncentral t returns NaN for a tail that
    # underflows (e.g. cdf(-4.7, 6, 9.3)); the far tail is taken as sf at -shift, which
    # underflows to 0 instead, and the near tail from whichever of sf and 1 - cdf is finite.
    shift = math.sqrt(n) * abs(difference) / sd
    near = float(stats.nct.sf(critical, dof, shift))
    if not math.isfinite(near):
        near = 1.0 - float(stats.nct.cdf(critical, dof, shift))
    far = float(stats.nct.sf(critical, dof, -shift))
    far = far if math.isfinite(far) else 0.0
    if not math.isfinite(near):
        raise ValueError(
            f"the power at difference={difference!r}, sd={sd!r}, n={n} is out of scipy's "
            "numerical range"
        )
    return min(1.0, near + far)


def minimal_detectable_difference(
    n: int, sd: float, *, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> float:
    r"""The smallest true mean difference the paired t-test detects with the given power.

    The positive :math:`\delta` with :func:`paired_power` ``(delta, sd, n) = power``, found
    by root finding on the noncentral t distribution. For ``m`` Holm comparisons the level
    is ``alpha / m`` (Bonferroni's bound: the detectable difference under Holm is at most
    this). A difference that is not significant says little unless it is small against
    this number.

    Args:
        n: number of pairs (seeds), ``>= 2``.
        sd: deviation of the paired differences, ``> 0`` (e.g. the observed one).
        alpha: family-wise significance level in ``(0, 1)``.
        power: the target power, in ``(alpha / comparisons, 1)``.
        comparisons: number ``m >= 1`` of comparisons in the Holm family.

    Returns:
        The minimal detectable difference, in the units of ``sd``.

    Raises:
        ValueError: If an argument is out of range (e.g. ``n < 2`` or ``sd <= 0``).
        TypeError: If an argument has the wrong type.

    Example:
        >>> round(minimal_detectable_difference(34, 1.0), 3)
        0.495
    """
    check_positive("sd", sd)
    check_int("n", n, 2)
    level = _check_design(alpha, comparisons)
    check_in_range("power", power, level, 1.0, inclusive=False)
    scale = sd / math.sqrt(n)

    def excess(shift: float) -> float:
        return paired_power(shift * scale, sd, n, alpha=alpha, comparisons=comparisons) - power

    return _root(excess, 0.0, 8.0) * scale


def sample_size(
    difference: float,
    sd: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    max_n: int = 1_000_000,
) -> int:
    """The number of pairs (seeds) a paired t-test needs to detect ``difference``.

    The smallest ``n >= 2`` with :func:`paired_power` ``(difference, sd, n) >= power``
    (power grows with ``n``), so :func:`minimal_detectable_difference` of the result is at
    most ``|difference|``.

    Args:
        difference: the mean difference to detect, non-zero.
        sd: deviation of the paired differences, ``> 0``.
        alpha: family-wise significance level in ``(0, 1)``.
        power: the target power, in ``(alpha / comparisons, 1)``.
        comparisons: number ``m >= 1`` of comparisons in the Holm family.
        max_n: give up (``ValueError``) beyond this many pairs.

    Returns:
        The number of pairs.

    Raises:
        ValueError: If ``difference`` is zero or not finite, another argument is out of
            range, or more than ``max_n`` pairs would be needed.
        TypeError: If an argument has the wrong type.

    Example:
        >>> sample_size(0.5, 1.0)  # d_z = 0.5: 34 pairs, as in the power tables
        34
    """
    check_in_range("difference", difference, -math.inf, math.inf, inclusive=False)
    if difference == 0:
        raise ValueError("difference must be non-zero (no n detects a zero difference); got 0")
    check_positive("sd", sd)
    level = _check_design(alpha, comparisons)
    check_in_range("power", power, level, 1.0, inclusive=False)
    check_int("max_n", max_n, 2)

    def enough(n: int) -> bool:
        return paired_power(difference, sd, n, alpha=alpha, comparisons=comparisons) >= power

    low, high = 1, 2  # enough(low) is False by convention (n = 1 has no test)
    while not enough(high):
        if high >= max_n:
            raise ValueError(
                f"detecting difference={difference!r} with sd={sd!r} and power={power!r} needs "
                f"more than max_n={max_n} pairs"
            )
        low, high = high, min(2 * high, max_n)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of ``|mean(a - b)| < margin``.

    Attributes:
        difference: mean of ``a - b``.
        low: lower end of the ``1 - 2 alpha`` interval of the difference.
        high: upper end of that interval; equivalence holds when it lies in
            ``(-margin, margin)``.
        p_value: the larger of the two one-sided p-values.
        equivalent: whether ``p_value <= alpha``.
        margin: the declared equivalence margin.
        alpha: the level of each one-sided test.
        n: number of pairs.
    """

    difference: float
    low: float
    high: float
    p_value: float
    equivalent: bool
    margin: float
    alpha: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def equivalence_test(
    a: Sequence[float], b: Sequence[float], *, margin: float = 0.05, alpha: float = 0.05
) -> Equivalence:
    r"""Paired equivalence test: two one-sided t-tests against a declared margin.

    Equivalence within :math:`\pm m` is claimed when both :math:`H_0^-: \mu \le -m` and
    :math:`H_0^+: \mu \ge m` are rejected at ``alpha`` (Schuirmann, 1987), that is when the
    :math:`1 - 2\alpha` interval of the mean difference lies inside :math:`(-m, m)`:

    .. math::

        p = \max\Big(P\big(T_{n-1} \ge \tfrac{\bar d + m}{s_d/\sqrt n}\big),\;
        P\big(T_{n-1} \le \tfrac{\bar d - m}{s_d/\sqrt n}\big)\Big).

    The margin must be declared before looking (0.05 is five points of accuracy). Without
    spread in the differences each one-sided statistic is infinite: ``p = 0`` when
    :math:`|\bar d| < m`, else 1.

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        margin: the equivalence margin :math:`m > 0`, in the values' units.
        alpha: level of each one-sided test, in ``(0, 0.5)``.

    Returns:
        An :class:`Equivalence`.

    Raises:
        ValueError: If ``margin <= 0``, the lengths differ, ``n < 2``, a value is not
            finite, or ``alpha`` is outside (0, 0.5).
        TypeError: If an input has the wrong type.

    Example:
        >>> e = equivalence_test([0.90, 0.91, 0.92, 0.90, 0.91], [0.91, 0.90, 0.92, 0.91, 0.90])
        >>> e.equivalent, round(e.high, 3)
        (True, 0.01)
    """
    check_positive("margin", margin)
    check_in_range("alpha", alpha, 0.0, 0.5, inclusive=False)
    differences = _paired_differences(a, b)
    n = len(differences)
    mean, std = _spread(differences)
    if std == 0.0:
        p_value = 0.0 if abs(mean) < margin else 1.0
        return Equivalence(mean, mean, mean, p_value, p_value <= alpha, margin, alpha, n)
    from scipy import stats

    standard_error = std / math.sqrt(n)
    above_lower = float(stats.t.sf((mean + margin) / standard_error, n - 1))
    below_upper = float(stats.t.cdf((mean - margin) / standard_error, n - 1))
    p_value = max(above_lower, below_upper)
    half = float(stats.t.ppf(1 - alpha, n - 1)) * standard_error
    return Equivalence(mean, mean - half, mean + half, p_value, p_value <= alpha, margin, alpha, n)


@dataclass(frozen=True)
class EffectSize:
    """The standardized mean difference of paired values, :math:`d_z`, and its interval.

    Attributes:
        d_z: mean of the differences over their deviation; ``inf`` with the mean's sign
            when the differences are equal and non-zero, 0 when no pair differs.
        low: lower end of the noncentral-t interval; ``None`` without spread.
        high: upper end of that interval; ``None`` without spread.
        n: number of pairs.
        confidence: the interval's nominal coverage.
    """

    d_z: float
    low: float | None
    high: float | None
    n: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def paired_effect_size(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> EffectSize:
    r"""Cohen's :math:`d_z = \bar d / s_d` of paired values, with an exact interval.

    :math:`\sqrt n\, d_z` follows the noncentral t distribution with :math:`n - 1`
    degrees of freedom and noncentrality :math:`\sqrt n\,\delta_z`; the interval inverts
    it (Steiger and Fouladi, 1997): its ends are the :math:`\delta_z` under which the
    observed statistic sits at the :math:`(1 \pm c)/2` quantiles. :math:`d_z` is the
    quantity that sets the power of a paired design: see :func:`paired_power`.

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        confidence: coverage of the interval, in ``(0, 1)``.

    Returns:
        An :class:`EffectSize`.

    Raises:
        ValueError: If the lengths differ, ``n < 2``, or a value is not finite.
        TypeError: If an input is not a sequence of real numbers.

    Example:
        >>> e = paired_effect_size([0.90, 0.88, 0.91, 0.89, 0.92], [0.85, 0.84, 0.85, 0.86, 0.86])
        >>> round(e.d_z, 2), round(e.low, 2), round(e.high, 2)
        (3.68, 1.09, 6.27)
    """
    check_in_range("confidence", confidence, 0.0, 1.0, inclusive=False)
    differences = _paired_differences(a, b)
    n = len(differences)
    mean, std = _spread(differences)
    if std == 0.0:
        d_z = 0.0 if abs(mean) <= 1e-12 else math.copysign(math.inf, mean)
        return EffectSize(d_z, None, None, n, confidence)
    from scipy import stats

    d_z = mean / std
    observed = math.sqrt(n) * d_z
    dof = n - 1

    def shift_at(quantile: float) -> float:
        # nct.cdf(observed, dof, shift) falls as the shift grows; find where it is `quantile`.
        def excess(shift: float) -> float:
            value = float(stats.nct.cdf(observed, dof, shift))
            if not math.isfinite(value):  # scipy's NaN where a tail underflows
                value = 1.0 - float(stats.nct.sf(observed, dof, shift))
            if not math.isfinite(value):
                value = 1.0 if observed > shift else 0.0
            return quantile - value

        start = observed - 10.0 - abs(observed)
        return _root(excess, start, observed + 10.0 + abs(observed))

    tail = (1 - confidence) / 2
    low = shift_at(1 - tail) / math.sqrt(n)
    high = shift_at(tail) / math.sqrt(n)
    return EffectSize(d_z, low, high, n, confidence)


VerdictKind = Literal["different", "equivalent", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """What a paired contrast supports: a difference, equivalence, or neither.

    Attributes:
        kind: ``"different"``, ``"equivalent"`` or ``"inconclusive"``.
        comparison: the paired comparison of ``a`` with ``b``.
        p_value: the p-value that decided significance (Holm-adjusted where given).
        equivalence: the equivalence test at ``alpha / comparisons``.
        detectable: the minimal detectable difference of this design at the observed
            deviation of the differences (0 when they have none).
        margin: the equivalence margin.
    """

    kind: VerdictKind
    comparison: PairedComparison
    p_value: float
    equivalence: Equivalence
    detectable: float
    margin: float

    @property
    def summary(self) -> str:
        """The verdict in one line, e.g. ``"inconclusive: detectable only above 0.15"``."""
        if self.kind == "different":
            return f"different: {self.comparison.difference:+.3g} (p = {self.p_value:.2g})"
        if self.kind == "equivalent":
            return f"equivalent within +-{self.margin:g}"
        return f"inconclusive: detectable only above {self.detectable:.2g}"

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly), with the summary."""
        return {**asdict(self), "summary": self.summary}


def verdict(
    a: Sequence[float],
    b: Sequence[float],
    *,
    margin: float = 0.05,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    p_value: float | None = None,
    test: PairedTest = "t",
) -> Verdict:
    """The verdict on one paired contrast, so that "not significant" never reads "equal".

    * ``"different"`` when the contrast's p-value (``p_value`` if given, e.g. Holm-adjusted
      from :func:`compare_all`; else the paired test's, times ``comparisons``) is at most
      ``alpha``;
    * otherwise ``"equivalent"`` when :func:`equivalence_test` at ``alpha / comparisons``
      puts the difference inside ``(-margin, margin)``;
    * otherwise ``"inconclusive"``, with the difference this design could have detected
      (:func:`minimal_detectable_difference` at the observed deviation of the differences,
      ``alpha``, ``power`` and ``comparisons``).

    Args:
        a: ``n >= 2`` finite values of the first condition, one per seed.
        b: the second condition's values for the same seeds, in the same order.
        margin: the declared equivalence margin, ``> 0``.
        alpha: family-wise significance level in ``(0, 0.5)``.
        power: the power at which the detectable difference is given.
        comparisons: number ``m >= 1`` of contrasts in the family.
        p_value: the adjusted p-value of this contrast, if already known.
        test: the paired test (see :func:`paired_comparison`).

    Returns:
        A :class:`Verdict`; its ``summary`` is one line of text.

    Raises:
        ValueError: If an input is out of range (e.g. ``margin <= 0``, ``n < 2``, unequal
            lengths, NaN).
        TypeError: If an input has the wrong type.

    Example:
        >>> a, b = [0.80, 0.90, 0.76, 0.86, 0.82], [0.84, 0.78, 0.85, 0.77, 0.87]
        >>> verdict(a, b).summary
        'inconclusive: detectable only above 0.16'
        >>> verdict(a, b, margin=0.15).summary
        'equivalent within +-0.15'
    """
    check_positive("margin", margin)
    check_in_range("alpha", alpha, 0.0, 0.5, inclusive=False)
    level = _check_design(alpha, comparisons)
    check_in_range("power", power, level, 1.0, inclusive=False)
    if p_value is not None:
        check_in_range("p_value", p_value, 0.0, 1.0)
    comparison = paired_comparison(a, b, test=test)
    decided = min(1.0, comparisons * comparison.p_value) if p_value is None else p_value
    equivalence = equivalence_test(a, b, margin=margin, alpha=level)
    _, std = _spread(_paired_differences(a, b))
    detectable = (
        0.0
        if std == 0.0
        else minimal_detectable_difference(
            comparison.n, std, alpha=alpha, power=power, comparisons=comparisons
        )
    )
    kind: VerdictKind
    if decided <= alpha:
        kind = "different"
    elif equivalence.equivalent:
        kind = "equivalent"
    else:
        kind = "inconclusive"
    return Verdict(kind, comparison, decided, equivalence, detectable, margin)
