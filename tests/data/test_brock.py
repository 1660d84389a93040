"""The Brock clinical label rule: published coefficients over the generator's factors."""

from __future__ import annotations

import math

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import BrockLabelRule
from nodulebench.data.sampling import label_coins


def _brock(d: float, part_solid: bool, non_solid: bool, spiculated: bool, extra: float) -> float:
    # McWilliams et al. 2013, full model with spiculation, typed from the paper's table
    x = (
        -6.7892
        - 5.3854 * ((d / 10) ** -0.5 - 1.58113883)
        + 0.377 * part_solid
        - 0.1276 * non_solid
        + 0.7729 * spiculated
        + extra
    )
    return 1 / (1 + math.exp(-x))


def test_probabilities_are_the_published_model() -> None:
    factors = {
        "diameter_mm": torch.tensor([4.0, 10.0, 18.0, 25.0]),
        "texture": torch.tensor([0, 1, 2, 0]),
        "spiculation": torch.tensor([0.1, 0.9, 0.6, 0.3]),
    }
    plain = BrockLabelRule().probability(factors)
    expected = [
        _brock(4.0, False, False, False, 0.0),
        _brock(10.0, True, False, True, 0.0),
        _brock(18.0, False, True, True, 0.0),
        _brock(25.0, False, False, False, 0.0),
    ]
    torch.testing.assert_close(plain, torch.tensor(expected, dtype=torch.float64))
    patient = BrockLabelRule(age=70, female=True, upper_lobe=True, nodule_count=1)
    extra = 0.0287 * 8 + 0.6011 + 0.6581 - 0.0824 * (1 - 4)
    assert float(patient.probability(factors)[1]) == pytest.approx(
        _brock(10.0, True, False, True, extra)
    )


def test_size_is_a_cause_of_the_labels() -> None:
    spec = NoduleSpec().with_label_rule(BrockLabelRule())
    ds = SyntheticNodules(spec, n=4000, seed=3)
    factors, labels = ds.factors, ds.labels
    p = spec.label_rule.probability(factors)
    # the coin draws labels at the model's rate (binomial error about 0.004)
    assert abs(float(labels.double().mean() - p.mean())) < 0.015
    big = factors["diameter_mm"] > 15
    assert float(labels[big].double().mean()) > 2 * float(labels[~big].double().mean())
    # a counterfactual on size with the same coin moves the label one way only
    grown = {**factors, "diameter_mm": torch.full_like(factors["diameter_mm"], 30.0)}
    coins = label_coins(3, torch.arange(4000))
    assert bool((spec.rule_labels(grown, coins) >= labels).all())
    assert "Brock" in spec.describe()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"age": 5.0}, ValueError, "age"),
        ({"nodule_count": 0}, ValueError, "nodule_count"),
        ({"female": 1}, TypeError, "female"),
        ({"spiculated_above": 1.5}, ValueError, "spiculated_above"),
    ],
)
def test_bad_patient_terms_are_named(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        NoduleSpec().with_label_rule(BrockLabelRule(**kwargs))  # type: ignore[arg-type]
