"""Accuracy per group and the worst group, over seeds (see :mod:`nodulebench.stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nodulebench._validation import check_integer_tensor, check_ndim

__all__ = ["GroupAccuracy", "group_accuracy"]


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
