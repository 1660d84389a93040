"""Binary classification metrics for out-of-distribution evaluation.

Shifted test distributions can hold a single class (the held-out combination holds one
(label, factor side) group only). A metric that needs the absent class is then
*undefined* and reported as ``None`` — never as NaN, never as a made-up number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from nodulebench._validation import check_ndim, check_positive

__all__ = ["BinaryMetrics", "binary_metrics", "expected_calibration_error", "roc_auc"]


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of a binary classifier on one test set (``None`` where undefined).

    Attributes:
        accuracy: fraction of correct predictions.
        sensitivity: true-positive rate (recall of class 1, malignant); ``None`` without
            positives.
        specificity: true-negative rate (recall of class 0, benign); ``None`` without
            negatives.
        balanced_accuracy: mean of the defined class recalls.
        roc_auc: area under the ROC curve; ``None`` unless both classes are present.
        ece: expected calibration error of the predicted class's confidence.
        n: number of samples.
        n_positive: number of samples with label 1.
    """

    accuracy: float
    sensitivity: float | None
    specificity: float | None
    balanced_accuracy: float
    roc_auc: float | None
    ece: float
    n: int
    n_positive: int

    def to_dict(self) -> dict[str, float | int | None]:
        """Return the metrics as a plain dictionary (JSON and CSV friendly)."""
        return asdict(self)


def _check_scores_and_labels(scores: torch.Tensor, labels: torch.Tensor) -> None:
    check_ndim("scores", scores, (1,), "(N,)")
    check_ndim("labels", labels, (1,), "(N,)")
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have the same length; got {scores.shape[0]} and "
            f"{labels.shape[0]}"
        )
    if scores.numel() == 0:
        raise ValueError("scores must hold at least one sample; got an empty tensor")
    if not bool(torch.isfinite(scores.float()).all()):
        raise ValueError("scores must be finite; got NaN or infinite values")
    bad = ~((labels == 0) | (labels == 1))
    if bool(bad.any()):
        raise ValueError(f"labels must be 0 or 1; got {labels[bad][0].item()!r} among them")


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve, with ties counted as one half.

    Computed as the Mann-Whitney U statistic from average ranks, in float64.

    Args:
        scores: ``(N,)`` higher means more likely class 1.
        labels: ``(N,)`` in ``{0, 1}``.

    Returns:
        The AUC in [0, 1], or ``None`` when only one class is present.

    Example:
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    _check_scores_and_labels(scores, labels)
    y = labels.to(torch.bool)
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    s = scores.detach().to(torch.float64).cpu()
    sorted_scores, order = torch.sort(s)
    # Average rank of each run of tied scores (ranks start at 1).
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = average_rank[inverse]
    rank_sum_pos = float(ranks[y.cpu()].sum())
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15
) -> float:
    r"""Top-label expected calibration error with equal-width confidence bins.

    The predicted class is 1 when :math:`p \ge 0.5`; its confidence is
    :math:`c = \max(p, 1 - p) \in [0.5, 1]`. With bins :math:`B_k` of equal width over
    :math:`[0.5, 1]`,

    .. math::
        \mathrm{ECE} = \sum_k \frac{|B_k|}{N}\,\bigl|\mathrm{acc}(B_k) - \mathrm{conf}(B_k)\bigr|.

    Args:
        probabilities: ``(N,)`` predicted probability of class 1, in [0, 1].
        labels: ``(N,)`` in ``{0, 1}``.
        n_bins: number of confidence bins.

    Returns:
        The ECE in [0, 1] (confidently wrong predictions approach 1).
    """
    _check_scores_and_labels(probabilities, labels)
    check_positive("n_bins", n_bins)
    p = probabilities.detach().to(torch.float64).cpu()
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(
            f"probabilities must lie in [0, 1]; got values in [{float(p.min()):g}, "
            f"{float(p.max()):g}] (logits? apply torch.sigmoid to one logit per sample, or "
            "torch.softmax(logits, dim=1)[:, 1] to two)"
        )
    y = labels.detach().cpu()
    predicted = (p >= 0.5).to(y.dtype)
    confidence = torch.where(predicted == 1, p, 1 - p)
    correct = (predicted == y).to(torch.float64)
    # Bin k holds [0.5 + k w, 0.5 + (k + 1) w), the last one also 1.0. Comparing with the
    # edges themselves, not flooring (c - 0.5) / w, keeps a confidence that sits on an edge
    # in the bin that starts there despite rounding.
    inner_edges = 0.5 + torch.arange(1, n_bins, dtype=torch.float64) * 0.5 / n_bins
    bin_index = torch.bucketize(confidence, inner_edges, right=True)
    conf_sum = torch.bincount(bin_index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bin_index, weights=correct, minlength=n_bins)
    return float((conf_sum - acc_sum).abs().sum() / p.numel())


def binary_metrics(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    *,
    threshold: float = 0.5,
    n_bins: int = 15,
) -> BinaryMetrics:
    """All metrics of the study for one test set.

    Args:
        probabilities: ``(N,)`` predicted probability of class 1 (malignant).
        labels: ``(N,)`` true labels in ``{0, 1}``.
        threshold: a sample is predicted malignant when its probability is ``>=`` this.
        n_bins: bins of the expected calibration error.

    Returns:
        A :class:`BinaryMetrics`; metrics that need an absent class are ``None``.

    Example:
        >>> m = binary_metrics(torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 0, 1]))
        >>> m.accuracy, m.sensitivity, m.specificity
        (0.5, 0.5, 0.5)
    """
    _check_scores_and_labels(probabilities, labels)
    y = labels.detach().cpu().to(torch.bool)
    predicted = probabilities.detach().cpu() >= threshold
    n = y.numel()
    n_pos = int(y.sum())
    sensitivity = float((predicted & y).sum()) / n_pos if n_pos else None
    specificity = float((~predicted & ~y).sum()) / (n - n_pos) if n - n_pos else None
    recalls = [r for r in (sensitivity, specificity) if r is not None]
    return BinaryMetrics(
        accuracy=float((predicted == y).sum()) / n,
        sensitivity=sensitivity,
        specificity=specificity,
        balanced_accuracy=sum(recalls) / len(recalls),
        roc_auc=roc_auc(probabilities, labels),
        ece=expected_calibration_error(probabilities, labels, n_bins=n_bins),
        n=n,
        n_positive=n_pos,
    )
