"""Accuracy per group and the worst group, over seeds (see :mod:`nodulebench.stats`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from nodulebench._validation import (
    check_choice,
    check_in_range,
    check_int,
    check_integer_tensor,
    check_ndim,
    check_positive,
)
from nodulebench.stats._inference import MeanInterval, _values, mean_interval

__all__ = [
    "GroupAccuracy",
    "WorstGroupAccuracy",
    "group_accuracy",
    "group_size_for_standard_error",
    "worst_group_accuracy",
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


@dataclass(frozen=True)
class WorstGroupAccuracy:
    """Accuracy of every group over seeds, and of the worst group.

    Attributes:
        per_group: ``{group: MeanInterval}``, each group's accuracy over the seeds with its
            interval: the primary table.
        worst: the lowest seed-mean group accuracy.
        worst_group: the group with that mean (the first in the seeds' order on ties).
        low: lower end of the worst-group interval; ``None`` for a single seed.
        high: upper end of that interval; ``None`` for a single seed.
        per_seed_minimum: the mean over seeds of each seed's lowest group accuracy, with its
            interval: the usual estimator, biased low because every seed's minimum picks
            that seed's unluckiest group; kept for comparison.
        method: ``"t"`` or ``"bootstrap"``, how the interval was made.
        n_seeds: number of seeds.
        confidence: the intervals' nominal coverage.
    """

    per_group: dict[str, MeanInterval]
    worst: float
    worst_group: str
    low: float | None
    high: float | None
    per_seed_minimum: MeanInterval
    method: str
    n_seeds: int
    confidence: float

    def table(self) -> list[dict[str, Any]]:
        """The per-group table as tidy rows, one per group in the seeds' order.

        Returns:
            ``[{"group", "mean", "low", "high", "std", "n", "worst"}, ...]``, ready for CSV.
        """
        return [
            {
                "group": name,
                "mean": value.mean,
                "low": value.low,
                "high": value.high,
                "std": value.std,
                "n": value.n,
                "worst": name == self.worst_group,
            }
            for name, value in self.per_group.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def _group_table(
    per_seed: Sequence[Mapping[str, float] | GroupAccuracy],
) -> tuple[list[str], list[list[float]]]:
    """Group names and ``[seed][group]`` accuracies, checked to cover the same groups."""
    if isinstance(per_seed, (str, bytes, Mapping)) or not isinstance(per_seed, Sequence):
        raise TypeError(
            "per_seed must be a sequence with one {group: accuracy} mapping per seed; "
            f"got {type(per_seed).__name__}"
        )
    if len(per_seed) == 0:
        raise ValueError("per_seed must hold at least one seed; got none")
    rows: list[Mapping[str, float]] = []
    for index, entry in enumerate(per_seed):
        entry = entry.per_group if isinstance(entry, GroupAccuracy) else entry
        if not isinstance(entry, Mapping) or len(entry) == 0:
            raise TypeError(
                f"per_seed[{index}] must be a non-empty {{group: accuracy}} mapping or a "
                f"GroupAccuracy; got {entry!r}"
            )
        rows.append(entry)
    names = list(rows[0])
    table = []
    for index, row in enumerate(rows):
        if set(row) != set(names):
            missing, extra = sorted(set(names) - set(row)), sorted(set(row) - set(names))
            raise ValueError(
                f"per_seed[{index}] must have the groups of per_seed[0]; missing {missing}, "
                f"extra {extra} (a group absent from a seed's test set has no accuracy)"
            )
        values = _values(f"per_seed[{index}]", [row[name] for name in names], 1)
        for name, value in zip(names, values, strict=True):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"per_seed[{index}][{name!r}] must lie in [0, 1]; got {value!r}")
        table.append(values)
    return names, table


def worst_group_accuracy(
    per_seed: Sequence[Mapping[str, float] | GroupAccuracy],
    *,
    confidence: float = 0.95,
    method: Literal["t", "bootstrap"] = "t",
    n_resamples: int = 4000,
    seed: int = 0,
) -> WorstGroupAccuracy:
    r"""Worst-group accuracy over seeds, from the seed-mean group accuracies.

    The usual estimator, the mean over seeds of each seed's worst group, is biased low:
    each seed's minimum over noisy group accuracies picks that seed's unluckiest group, so
    with four groups of equal accuracy it falls about one standard error of a group's
    accuracy below every group's mean (0.04 for groups of 40 samples at 0.925). Here every
    group's accuracy is first averaged over the seeds (the table ``per_group``, each with a
    Student-t interval), and the worst group is the group with the lowest mean,
    :math:`\min_g \bar a_g`; that is still a minimum of noisy means, but their noise is
    :math:`\sqrt{n}` times smaller (0.02 low in the example).

    The interval is, with ``method="t"``, the t interval of the worst group's mean (that
    group taken as given); with ``method="bootstrap"``, the percentile interval of
    :math:`\min_g \bar a_g^*` over ``n_resamples`` resamples of whole seeds (the groups of a
    seed stay together), from a generator seeded with ``seed``. A bootstrap over 5 seeds is
    too narrow: prefer ``"t"`` unless there are tens of seeds.

    Args:
        per_seed: one ``{group: accuracy}`` mapping per seed (e.g.
            :attr:`GroupAccuracy.per_group`) or the :class:`GroupAccuracy` itself; every
            seed must have the same groups.
        confidence: coverage of the intervals, in ``(0, 1)``.
        method: ``"t"`` or ``"bootstrap"``.
        n_resamples: bootstrap resamples (``method="bootstrap"`` only).
        seed: seed of the bootstrap's generator.

    Returns:
        A :class:`WorstGroupAccuracy`.

    Raises:
        ValueError: If there is no seed, the seeds' groups differ, an accuracy is outside
            ``[0, 1]`` or NaN, or an option is out of range.
        TypeError: If ``per_seed`` is not a sequence of mappings.

    Example:
        >>> seeds = [{"a": 0.90, "b": 0.95}, {"a": 0.96, "b": 0.89}, {"a": 0.93, "b": 0.93}]
        >>> r = worst_group_accuracy(seeds)
        >>> r.worst_group, round(r.worst, 3), round(r.per_seed_minimum.mean, 3)
        ('b', 0.923, 0.907)
    """
    check_in_range("confidence", confidence, 0.0, 1.0, inclusive=False)
    check_choice("method", method, ("t", "bootstrap"))
    check_int("n_resamples", n_resamples, 1)
    check_int("seed", seed, 0)
    names, table = _group_table(per_seed)
    n = len(table)
    per_group = {
        name: mean_interval([row[k] for row in table], confidence=confidence)
        for k, name in enumerate(names)
    }
    worst_group = min(names, key=lambda name: per_group[name].mean)
    worst = per_group[worst_group].mean
    minimum = mean_interval([min(row) for row in table], confidence=confidence)
    low, high = per_group[worst_group].low, per_group[worst_group].high
    if method == "bootstrap" and n > 1:
        import numpy as np

        values = np.asarray(table, dtype=np.float64)
        generator = np.random.default_rng(seed)
        draws = generator.integers(0, n, size=(n_resamples, n))
        minima = values[draws].mean(axis=1).min(axis=1)
        tail = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(minima, [tail, 1 - tail]))
    return WorstGroupAccuracy(
        per_group, worst, worst_group, low, high, minimum, method, n, confidence
    )


def group_size_for_standard_error(target: float = 0.01, *, accuracy: float = 0.5) -> int:
    r"""The test-group size at which a group's accuracy has standard error ``<= target``.

    A group of :math:`n` test samples classified correctly with probability :math:`p` has
    accuracy standard error :math:`\sqrt{p(1-p)/n}`, so
    :math:`n = \lceil p(1-p) / \mathrm{target}^2 \rceil`. ``accuracy=0.5`` is the worst case
    (2,500 samples for 0.01); at 0.9 it is 900. This is the test set's share of the noise:
    the seeds add their own on top.

    Args:
        target: the largest acceptable standard error, ``> 0``.
        accuracy: the group's expected accuracy :math:`p` in ``[0, 1]``.

    Returns:
        The number of samples (at least 1).

    Raises:
        ValueError: If ``target <= 0`` or ``accuracy`` is outside ``[0, 1]``.
        TypeError: If an argument is not a real number.

    Example:
        >>> group_size_for_standard_error(0.01)
        2500
        >>> group_size_for_standard_error(0.01, accuracy=0.9)
        900
    """
    check_positive("target", target)
    check_in_range("accuracy", accuracy, 0.0, 1.0)
    needed = accuracy * (1 - accuracy) / target**2
    # 0.25 / 0.01**2 is 2500.0000000000005 in floating point: round before the ceiling.
    return max(1, math.ceil(round(needed, 9)))
