"""Binary metrics against brute-force definitions written here from the formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench.metrics import binary_metrics, expected_calibration_error, roc_auc


def auc_by_pairs(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def ece_by_loop(probs: list[float], labels: list[int], n_bins: int) -> float:
    total = 0.0
    for k in range(n_bins):
        lo, hi = 0.5 + k * 0.5 / n_bins, 0.5 + (k + 1) * 0.5 / n_bins
        members = []
        for p, y in zip(probs, labels, strict=True):
            pred = 1 if p >= 0.5 else 0
            conf = p if pred == 1 else 1 - p
            last = k == n_bins - 1
            if lo <= conf < hi or (last and conf == hi):
                members.append((conf, pred == y))
        if members:
            conf_mean = sum(c for c, _ in members) / len(members)
            acc = sum(1.0 for _, ok in members if ok) / len(members)
            total += len(members) / len(probs) * abs(acc - conf_mean)
    return total


samples = st.lists(
    st.tuples(st.sampled_from([i / 20 for i in range(21)]), st.integers(0, 1)),
    min_size=2,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(samples)
def test_auc_matches_pair_counting_with_ties(data: list[tuple[float, int]]) -> None:
    scores, labels = zip(*data, strict=True)
    got = roc_auc(torch.tensor(scores), torch.tensor(labels))
    if len(set(labels)) < 2:
        assert got is None
    else:
        assert got == pytest.approx(auc_by_pairs(list(scores), list(labels)), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(samples, st.integers(1, 20))
def test_ece_matches_loop(data: list[tuple[float, int]], n_bins: int) -> None:
    probs, labels = zip(*data, strict=True)
    got = expected_calibration_error(
        torch.tensor(probs, dtype=torch.float64), torch.tensor(labels), n_bins=n_bins
    )
    assert got == pytest.approx(ece_by_loop(list(probs), list(labels), n_bins), abs=1e-12)


def test_confusion_based_metrics() -> None:
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.1, 0.2, 0.7])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    m = binary_metrics(probs, labels)
    assert m.sensitivity == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(2 / 4)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert m.accuracy == pytest.approx(4 / 7)
    assert (m.n, m.n_positive) == (7, 3)
    assert set(m.to_dict()) == {
        "accuracy",
        "sensitivity",
        "specificity",
        "balanced_accuracy",
        "roc_auc",
        "ece",
        "n",
        "n_positive",
    }


def test_single_class_set_reports_undefined_metrics_as_none() -> None:
    m = binary_metrics(torch.tensor([0.9, 0.4, 0.7]), torch.tensor([1, 1, 1]))
    assert m.specificity is None and m.roc_auc is None
    assert m.balanced_accuracy == pytest.approx(2 / 3) == m.sensitivity


def test_perfectly_calibrated_confident_predictions_have_zero_ece() -> None:
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])) == 0.0


@pytest.mark.parametrize(
    ("probs", "labels", "fragment"),
    [
        (torch.tensor([0.5, 0.5]), torch.tensor([1]), "same length"),
        (torch.tensor([[0.5]]), torch.tensor([1]), "scores must have shape (N,)"),
        (torch.tensor([]), torch.tensor([], dtype=torch.long), "at least one sample"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([1, 0]), "finite"),
        (torch.tensor([0.5, 0.2]), torch.tensor([1, 2]), "labels must be 0 or 1; got 2"),
        (torch.tensor([1.5, 0.2]), torch.tensor([1, 0]), "probabilities must lie in [0, 1]"),
        (
            torch.tensor([2.5, -1.0]),
            torch.tensor([1, 0]),
            "got values in [-1, 2.5] (logits? apply torch.sigmoid",
        ),
    ],
)
def test_bad_input_is_named(probs: torch.Tensor, labels: torch.Tensor, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        binary_metrics(probs, labels)
    assert fragment in str(info.value)


def test_confidence_on_a_bin_edge_falls_into_the_bin_that_starts_there() -> None:
    # Confidences 0.75 and 0.7 share the bin [0.7, 0.8) of 5: |0.5 - 0.725| = 0.225.
    probs = torch.tensor([0.25, 0.7], dtype=torch.float64)
    got = expected_calibration_error(probs, torch.tensor([0, 0]), n_bins=5)
    assert got == pytest.approx(0.225, abs=1e-12)


def test_ece_of_confidently_wrong_predictions_exceeds_one_half() -> None:
    # Every prediction 0.99 sure and wrong: |accuracy - confidence| = 0.99 in one bin.
    assert expected_calibration_error(
        torch.tensor([0.99, 0.01]), torch.tensor([0, 1])
    ) == pytest.approx(0.99)
