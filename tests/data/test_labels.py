"""Label rules: the probabilistic rule, its coin, fingerprints, heldout for every rule."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import LabelFunction, LinearLabelRule, LogisticLabelRule, Split, sampling
from nodulebench.data.distributions import ByCategory
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


# Digests of the labels (n=1237, seed=5) as the eager pass over every sample computed them
# before labels and rows were computed in chunks and per index. (The factor tables' digests
# of that pass are gone: the generator has since gained factors; the tables are compared
# with one chunk covering every sample instead.)
_LINEAR = LinearLabelRule({"diameter_mm": 1.0, "attenuation_hu": 1.0}, 0.9)


def _big(f: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return (f["diameter_mm"] > 12).long()


_BIG = LabelFunction(_big, ("diameter_mm",), "big")
_REFERENCE = {
    "default": (NoduleSpec(), "32af49d5ba515b76"),
    "default_noise_shortcut": (
        NoduleSpec(label_noise=0.1).with_shortcut("diameter_mm", 0.6),
        "7880d9a7b9b6712d",
    ),
    "split_free": (NoduleSpec(malignant_fraction=None), "12c72e5fde803d3d"),
    "split_free_shortcut_noise": (
        NoduleSpec(malignant_fraction=None, label_noise=0.05).with_shortcut("diameter_mm", 0.8),
        "821ced43937be58a",
    ),
    "logistic": (SPEC, "991b40d5e6ce9d3b"),
    "linear_noise": (
        NoduleSpec(label_rule=_LINEAR, malignant_fraction=None, label_noise=0.1),
        "c59ce7fec457f893",
    ),
    "function_noise_shortcut": (
        NoduleSpec(label_rule=_BIG, malignant_fraction=None, label_noise=0.2).with_shortcut(
            "spiculation", 0.5
        ),
        "0ab924757996a29d",
    ),
}


def _digest(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(_REFERENCE))
def test_chunked_labels_and_rows_equal_the_eager_pass(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels alone, the table, dataset rows and a pickled dataset's rows, in small chunks
    (so that class counts carry across chunks), equal what one chunk over every sample gives,
    and the labels equal the eager pass's."""
    spec, label_digest = _REFERENCE[name]
    n, seed = 1237, 5
    monkeypatch.setattr(sampling, "_CHUNK", n)
    whole_factors, whole_labels = sample_factors(spec, n, seed)
    monkeypatch.setattr(sampling, "_CHUNK", 300)
    factors, labels = sample_factors(spec, n, seed)
    assert _digest(labels) == _digest(whole_labels) == label_digest
    assert factors.keys() == whole_factors.keys()
    for key, value in factors.items():
        assert torch.equal(value, whole_factors[key]), key
    assert _digest(sampling.sample_labels(spec, n, seed)) == label_digest
    ds = SyntheticNodules(spec, n=n, seed=seed)
    assert _digest(ds.labels) == label_digest
    idx = torch.tensor([1236, 0, 600, 299, 300, 901])
    worker = pickle.loads(pickle.dumps(ds))
    for source in (ds, worker):
        rows, row_labels = source._rows(idx)
        assert torch.equal(row_labels, labels[idx])
        for key, value in factors.items():
            assert torch.equal(rows[key], value[idx]), key


def test_labels_alone_draw_only_the_factors_the_rule_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Allocated labels draw no factor; a rule draws its inputs and their parents."""
    drawn: list[str] = []
    real = sampling.exogenous_uniforms

    def counting(seed: int, indices: torch.Tensor, factor: str) -> torch.Tensor:
        drawn.append(factor)
        return real(seed, indices, factor)

    monkeypatch.setattr(sampling, "exogenous_uniforms", counting)
    sampling.sample_labels(NoduleSpec(), 500, 0)
    assert drawn == []
    spec = _REFERENCE["linear_noise"][0]
    sampling.sample_labels(spec, 500, 0)
    parent = spec.marginals["attenuation_hu"]
    expected = {"diameter_mm", "attenuation_hu"} | (
        {parent.parent} if isinstance(parent, ByCategory) else set()
    )
    assert set(drawn) == expected


def test_a_pickled_dataset_carries_no_table() -> None:
    """Workers get the spec, not derived arrays: the pickle does not grow with n."""
    spec = _REFERENCE["split_free_shortcut_noise"][0]
    sizes = []
    for n in (200, 20_000):
        ds = SyntheticNodules(spec, n=n, seed=0)
        ds.labels, ds.factors  # noqa: B018  (build the tables)
        sizes.append(len(pickle.dumps(ds)))
    assert sizes[1] - sizes[0] < 64  # only the digits of n differ


def test_rule_truth_of_another_size_is_refused() -> None:
    spec = _REFERENCE["split_free_shortcut_noise"][0]
    truth = sampling.RuleTruth(spec, 10, 0)
    with pytest.raises(
        ValueError, match="truth must be the RuleTruth of 11 samples; got one of 10"
    ):
        sampling.factor_rows(spec, 11, 0, torch.arange(3), truth)
