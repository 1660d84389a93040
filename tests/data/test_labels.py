"""Label rules: the probabilistic rule, its coin, fingerprints, heldout for every rule."""

from __future__ import annotations

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import LabelFunction, LinearLabelRule, LogisticLabelRule, Split
from nodulebench.data.sampling import label_coins, sample_factors

RULE = LogisticLabelRule(
    {"diameter_mm": 6.0, "spiculation": 5.0}, {("texture", "part-solid"): 1.5}, bias=-5.0
)
SPEC = NoduleSpec(label_rule=RULE, malignant_fraction=None)


def test_logistic_labels_are_the_coin_below_the_probability() -> None:
    f, y = sample_factors(SPEC, 4000, 3)
    # an independent computation of p from the factor table
    d = (f["diameter_mm"].double() - 3.0) / 27.0
    s = f["spiculation"].double()
    logit = -5.0 + 6.0 * d + 5.0 * s + 1.5 * (f["texture"] == 1).double()
    p = 1 / (1 + torch.exp(-logit))
    coin = label_coins(3, torch.arange(4000))
    assert torch.equal(y, (coin < p).long())
    # the coin is uniform and independent of the factors: the rate follows the mean of p
    assert abs(float(y.double().mean()) - float(p.mean())) < 0.02
    # labels are a pure function of (spec, seed, index), and probabilistic (p in (0, 1))
    _, y_small = sample_factors(SPEC, 100, 3)
    assert torch.equal(y_small, y[:100])
    mixed = (p > 0.3) & (p < 0.7)
    assert 0.3 < float(y[mixed].double().mean()) < 0.7


def test_counterfactual_labels_keep_the_coin() -> None:
    ds = SyntheticNodules(SPEC, n=64, seed=1)
    coins = label_coins(1, torch.arange(64))
    assert torch.equal(SPEC.rule_labels(ds.factors, coins), ds.labels)
    bigger = {**ds.factors, "diameter_mm": torch.full((64,), 30.0), "spiculation": torch.ones(64)}
    flipped = SPEC.rule_labels(bigger, coins)
    assert bool((flipped >= ds.labels).all()) and int(flipped.sum()) > int(ds.labels.sum())
    with pytest.raises(ValueError, match="coin must be the samples"):
        SPEC.rule_labels(ds.factors)


def test_label_noise_flips_an_exact_count_of_probabilistic_labels() -> None:
    _, clean = sample_factors(SPEC, 1000, 0)
    _, noisy = sample_factors(SPEC.replace(label_noise=0.1), 1000, 0)
    assert int((clean != noisy).sum()) == 100


def test_fingerprints_tell_rules_apart() -> None:
    a = LabelFunction(lambda fs: (fs["lobulation"] > 0.3).long(), ("lobulation",), "lob")
    b = LabelFunction(lambda fs: (fs["lobulation"] > 0.5).long(), ("lobulation",), "lob")
    specs = [
        NoduleSpec(label_rule=rule, malignant_fraction=None)
        for rule in (
            a,
            b,
            LinearLabelRule({"spiculation": 1.0}, 0.5),
            LogisticLabelRule({"spiculation": 1.0}, bias=0.5),
            RULE,
        )
    ]
    prints = {spec.fingerprint() for spec in specs}
    assert len(prints) == len(specs)
    # the same function (by value) gives the same fingerprint
    a2 = LabelFunction(a.fn, ("lobulation",), "lob")
    assert NoduleSpec(label_rule=a2, malignant_fraction=None).fingerprint() == (
        specs[0].fingerprint()
    )


@pytest.mark.parametrize("rule", [LinearLabelRule({"spiculation": 1.0}, 0.5), RULE])
def test_heldout_for_rules_that_cannot_fix_the_label(rule) -> None:
    train = NoduleSpec(label_rule=rule, malignant_fraction=None).with_shortcut("calcification", 0.8)
    held = train.test_distributions()["heldout"]
    f, y = sample_factors(held, 600, 1)
    side = held.shortcuts[0].split.malignant_side(f["calcification"])
    # every class entirely in the group training makes rarest: malignant on the benign side
    assert 0 < int(y.sum()) < 600
    assert bool((side[y == 1] == 0).all()) and bool((side[y == 0] == 1).all())


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: LogisticLabelRule({"texture": 1.0}), "must name continuous factors"),
        (lambda: LogisticLabelRule({}, {("texture", "fluffy"): 1.0}), "got 'fluffy'"),
        (lambda: LogisticLabelRule({"spiculation": float("nan")}), "must be finite"),
        (lambda: LogisticLabelRule({"spiculation": 1.0}, bias=float("inf")), "bias must be finite"),
        (lambda: LogisticLabelRule({}), "at least one factor"),
        (lambda: LogisticLabelRule({"size": 1.0}), "got 'size'"),
    ],
)
def test_bad_logistic_rules_are_named(make, fragment) -> None:
    with pytest.raises(ValueError, match="label_rule") as info:
        NoduleSpec(label_rule=make(), malignant_fraction=None)
    assert fragment in str(info.value)


def test_logistic_rule_needs_free_class_counts() -> None:
    with pytest.raises(ValueError, match="malignant_fraction must be None"):
        NoduleSpec(label_rule=RULE)
    assert NoduleSpec(label_rule=Split("spiculation", 0.5)).malignant_fraction == 0.5
