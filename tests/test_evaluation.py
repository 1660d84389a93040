"""Group ids on the dataset and the evaluation over a spec's test distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.evaluation import evaluate, evaluate_predictions, predict_probabilities

SPEC = NoduleSpec().with_shortcut("diameter_mm", 0.8)


def _counts(groups: torch.Tensor) -> list[int]:
    return groups.bincount(minlength=4).tolist()


def test_group_ids_follow_the_exact_shortcut_allocation() -> None:
    # Planted truth: strength s puts round(n_c (1 + s) / 2) of each class on the side of
    # the split tied to its label, so with s = 0.8 nine in ten are aligned; reversing the
    # strength swaps aligned and conflicting; decorrelating makes them half and half.
    ds = SyntheticNodules(SPEC, n=200, seed=3)
    labels = ds.labels
    n_benign, n_malignant = int((labels == 0).sum()), int((labels == 1).sum())
    expected = [
        round(n_benign * 0.9),
        n_benign - round(n_benign * 0.9),
        round(n_malignant * 0.9),
        n_malignant - round(n_malignant * 0.9),
    ]
    groups = ds.group_ids()
    assert groups.dtype == torch.int64 and groups.shape == (200,)
    assert _counts(groups) == expected
    assert torch.equal(groups // 2, labels)
    reversed_groups = SyntheticNodules(SPEC.reversed(), n=200, seed=3).group_ids()
    assert _counts(reversed_groups)[1] > _counts(reversed_groups)[0]
    decorrelated = _counts(SyntheticNodules(SPEC.decorrelated(), n=200, seed=3).group_ids())
    assert abs(decorrelated[0] - decorrelated[1]) <= 1
    assert abs(decorrelated[2] - decorrelated[3]) <= 1


def test_group_ids_pick_any_shortcut_and_name_bad_arguments() -> None:
    two = SPEC.with_shortcut("texture", 1.0)
    ds = SyntheticNodules(two, n=100, seed=0)
    assert _counts(ds.group_ids("texture"))[1::2] == [0, 0]  # strength 1: none conflicts
    assert _counts(ds.group_ids("diameter_mm"))[1::2] != [0, 0]
    with pytest.raises(ValueError, match=r"factor must be one of .*'diameter_mm', 'texture'"):
        ds.group_ids("noise_hu")
    with pytest.raises(ValueError, match="group_ids needs a spec with a shortcut"):
        SyntheticNodules(n=10).group_ids()


def test_evaluate_predictions_against_hand_counts() -> None:
    probabilities = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.7])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    groups = torch.tensor([2, 2, 3, 0, 0, 1])
    result = evaluate_predictions(probabilities, labels, groups)
    # predicted 1, 1, 0, 1, 0, 1: groups 2 -> 2/2, 3 -> 0/1, 0 -> 1/2, 1 -> 0/1
    assert result.group_accuracy == {
        "benign-aligned": 0.5,
        "benign-conflicting": 0.0,
        "malignant-aligned": 1.0,
        "malignant-conflicting": 0.0,
    }
    assert result.group_counts == {
        "benign-aligned": 2,
        "benign-conflicting": 1,
        "malignant-aligned": 2,
        "malignant-conflicting": 1,
    }
    assert (result.worst_group_accuracy, result.worst_group) == (0.0, "benign-conflicting")
    assert result.metrics.accuracy == pytest.approx(3 / 6)
    assert result.metrics.balanced_accuracy == pytest.approx((2 / 3 + 1 / 3) / 2)
    # AUC: of the 9 (positive, negative) pairs the positive scores higher in 3 + 3 + 1
    assert result.metrics.roc_auc == pytest.approx(7 / 9)
    flat = result.to_dict()
    assert flat["worst_group"] == "benign-conflicting" and flat["n"] == 6


def test_predict_probabilities_reads_every_output_form_and_restores_the_mode() -> None:
    images = torch.linspace(-2, 2, 5).reshape(5, 1, 1, 1)
    two = predict_probabilities(lambda x: torch.cat([torch.zeros_like(x), x], 1).flatten(1), images)
    torch.testing.assert_close(two, torch.sigmoid(images.flatten()))  # softmax of (0, x)
    one = predict_probabilities(lambda x: x.flatten(1), images, batch_size=2)
    torch.testing.assert_close(one, torch.sigmoid(images.flatten()))
    given = predict_probabilities(lambda x: x.flatten() / 4 + 0.5, images, output="probabilities")
    torch.testing.assert_close(given, images.flatten() / 4 + 0.5)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(1, 2)).train()
    first = predict_probabilities(model, images)
    torch.testing.assert_close(first, predict_probabilities(model, images))  # no dropout
    assert model.training
    with pytest.raises(ValueError, match=r"model must return \(b, 2\) .* got shape \(5, 3\)"):
        predict_probabilities(lambda x: x.flatten(1).repeat(1, 3), images)
    with pytest.raises(ValueError, match="output must be one of"):
        predict_probabilities(model, images, output="scores")  # type: ignore[arg-type]


def test_evaluate_a_constant_classifier_on_every_test_distribution() -> None:
    # Planted truth: "always malignant" is right on every malignant sample and wrong on
    # every benign one, whatever the distribution.
    results = evaluate(
        lambda x: torch.ones(len(x)), SPEC, n=40, image_size=16, output="probabilities"
    )
    assert list(results) == list(SPEC.test_distributions())
    for name, result in results.items():
        labels = SyntheticNodules(SPEC.test_distributions()[name], n=40, seed=1).labels
        assert result.metrics.accuracy == pytest.approx(float(labels.float().mean())), name
        for group, accuracy in result.group_accuracy.items():
            assert accuracy == (1.0 if group.startswith("malignant") else 0.0), (name, group)
        if (labels == 0).any():
            assert result.worst_group_accuracy == 0.0
        assert result.metrics.roc_auc is None or math.isclose(result.metrics.roc_auc, 0.5)


def test_evaluate_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spec must have a shortcut"):
        evaluate(lambda x: x, NoduleSpec())
    with pytest.raises(TypeError, match="spec must be a NoduleSpec"):
        evaluate(lambda x: x, "spec")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        evaluate(lambda x: x, SPEC, n=0)
