"""NoduleSpec: validation, exact label and shortcut counts, test distributions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench import NoduleSpec
from nodulebench.data import (
    FACTORS,
    TEST_DISTRIBUTIONS,
    ByCategory,
    Categorical,
    Fixed,
    LabelFunction,
    LinearLabelRule,
    Shortcut,
    Split,
    Uniform,
)
from nodulebench.data.sampling import sample_factors


def agree_counts(spec: NoduleSpec, n: int, seed: int = 0) -> dict[str, dict[int, tuple[int, int]]]:
    """Per shortcut and class: (number on the side agreeing with the label, class size)."""
    factors, labels = sample_factors(spec, n, seed)
    out = {}
    for sc in spec.shortcuts:
        side = sc.split.malignant_side(factors[sc.split.factor])
        per_class = {}
        for c in (0, 1):
            m = labels == c
            agree = side[m] if c == 1 else ~side[m]
            per_class[c] = (int(agree.sum()), int(m.sum()))
        out[sc.split.factor] = per_class
    return out


def expected_agree(n_c: int, strength: float) -> int:
    return math.floor(n_c * (1 + strength) / 2 + 0.5)


def test_default_spec_label_rule_and_balance() -> None:
    spec = NoduleSpec()
    assert spec.causal_factors == ("spiculation",)
    assert spec.shortcut_factors == ()
    assert "spiculation > 0.5" in spec.describe()
    factors, labels = sample_factors(spec, 1001, 3)
    assert int(labels.sum()) == 501  # round half up of 500.5
    assert torch.equal(labels, (factors["spiculation"] > 0.5).long())
    # the default marginal keeps a gap around the threshold
    s = factors["spiculation"]
    assert not bool(((s > 0.35) & (s < 0.65)).any())


def test_factors_stay_in_physical_ranges_and_marginals() -> None:
    factors, _ = sample_factors(NoduleSpec(), 2000, 1)
    for name, info in FACTORS.items():
        v = factors[name]
        if info.is_categorical:
            assert v.dtype == torch.int64
            assert int(v.min()) >= 0 and int(v.max()) < len(info.categories)
        else:
            assert v.dtype == torch.float32
            assert float(v.min()) >= info.low and float(v.max()) <= info.high
    d = factors["diameter_mm"]
    assert 5.0 <= float(d.min()) and float(d.max()) <= 20.0
    assert abs(float(d.mean()) - 12.5) < 0.5
    # attenuation follows texture
    att, tex = factors["attenuation_hu"], factors["texture"]
    assert float(att[tex == 0].min()) >= 0.0
    assert float(att[tex == 2].max()) <= -450.0
    share = torch.bincount(tex, minlength=3).float() / 2000
    assert torch.allclose(share, torch.tensor([0.6, 0.2, 0.2]), atol=0.04)


@pytest.mark.parametrize("strength", [-1.0, -0.3, 0.0, 0.55, 0.9, 1.0])
@pytest.mark.parametrize(
    ("factor", "n"), [("diameter_mm", 999), ("calcification", 500), ("texture", 137)]
)
def test_exact_shortcut_counts(factor: str, n: int, strength: float) -> None:
    spec = NoduleSpec().with_shortcut(factor, strength)
    for agree, size in agree_counts(spec, n)[factor].values():
        assert agree == expected_agree(size, strength)


def test_combined_shortcuts_each_exact_with_label_noise() -> None:
    spec = (
        NoduleSpec(label_noise=0.1)
        .with_shortcut("diameter_mm", 0.8)
        .with_shortcut("calcification", -0.6)
        .with_shortcut("margin_sharpness", 0.3, threshold=0.8)
    )
    factors, labels = sample_factors(spec, 777, 5)
    clean = (factors["spiculation"] > 0.5).long()
    assert int((clean != labels).sum()) == round(777 * 0.1)
    counts = agree_counts(spec, 777, 5)
    for sc in spec.shortcuts:
        for agree, size in counts[sc.split.factor].values():
            assert agree == expected_agree(size, sc.strength)


def test_conditioned_factor_keeps_its_marginal_within_the_side() -> None:
    spec = NoduleSpec().with_shortcut("diameter_mm", 1.0)
    factors, labels = sample_factors(spec, 4000, 0)
    big = factors["diameter_mm"][labels == 1]
    small = factors["diameter_mm"][labels == 0]
    assert float(big.min()) > 12.5 and float(small.max()) <= 12.5
    # uniform on (12.5, 20]: mean 16.25, var 56.25/12
    assert abs(float(big.mean()) - 16.25) < 0.15
    assert abs(float(big.var()) - 7.5**2 / 12) < 0.4


def test_test_distributions() -> None:
    train = NoduleSpec().with_shortcut("diameter_mm", 0.9)
    tests = train.test_distributions()
    assert tuple(tests) == TEST_DISTRIBUTIONS
    assert all(spec.name == name for name, spec in tests.items())
    assert tests["iid"].fingerprint() == train.fingerprint()
    assert tests["decorrelated"].shortcuts[0].strength == 0.0
    assert tests["reversed"].shortcuts[0].strength == -0.9
    f_rev, _ = sample_factors(tests["reversed"], 400, 1)
    assert agree_counts(tests["reversed"], 400, 1)["diameter_mm"][1] == (
        expected_agree(200, -0.9),
        200,
    )
    # held out: only malignant samples on the benign-looking side (small nodules)
    f_ho, y_ho = sample_factors(tests["heldout"], 300, 2)
    assert bool((y_ho == 1).all()) and float(f_ho["diameter_mm"].max()) <= 12.5
    # covariate shift: acquisition moved, the rest unchanged
    f_cov, _ = sample_factors(tests["covariate"], 300, 1)
    f_train, _ = sample_factors(train, 300, 1)
    # each site's noise 15 % higher (same exogenous noise), spacing coarser, more blur
    torch.testing.assert_close(f_cov["noise_hu"], 1.15 * f_train["noise_hu"], rtol=1e-4, atol=0)
    assert float(f_cov["pixel_spacing_mm"].min()) >= 0.8
    assert float(f_cov["blur_mm"].min()) >= 0.6
    assert tests["covariate"].marginals["diameter_mm"] == train.marginals["diameter_mm"]
    del f_rev


def test_heldout_with_negative_strength_and_benign_label() -> None:
    train = NoduleSpec().with_shortcut("calcification", -1.0)
    f, y = sample_factors(train.heldout(label=0), 200, 0)
    assert bool((y == 0).all())
    assert bool((f["calcification"] != 0).all())  # benign class, benign-looking side


def test_without_shortcut_there_is_no_heldout() -> None:
    tests = NoduleSpec().test_distributions()
    assert "heldout" not in tests and set(tests) < set(TEST_DISTRIBUTIONS)


def test_specs_are_immutable_and_builders_return_copies() -> None:
    spec = NoduleSpec()
    other = spec.with_shortcut("diameter_mm", 0.5)
    assert spec.shortcuts == () and len(other.shortcuts) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.label_noise = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.marginals["diameter_mm"] = Uniform(3, 4)  # type: ignore[index]
    # replacing a shortcut on the same factor
    assert other.with_shortcut("diameter_mm", -0.5).shortcuts[0].strength == -0.5
    assert hash(spec) == hash(NoduleSpec()) and spec == NoduleSpec()
    assert spec.fingerprint() != other.fingerprint()


def test_linear_and_callable_label_rules() -> None:
    rule = LinearLabelRule({"spiculation": 1.0, "diameter_mm": 1.0}, threshold=1.0)
    spec = NoduleSpec().with_label_rule(rule)
    f, y = sample_factors(spec, 500, 0)
    score = f["spiculation"].double() + (f["diameter_mm"].double() - 3) / 27
    assert torch.equal(y, (score > 1.0).long())
    fn = LabelFunction(lambda fs: (fs["lobulation"] > 0.3).long(), ("lobulation",), "lob")
    f2, y2 = sample_factors(NoduleSpec().with_label_rule(fn), 300, 0)
    assert torch.equal(y2, (f2["lobulation"] > 0.3).long())
    assert NoduleSpec().with_label_rule(fn).causal_factors == ("lobulation",)
    assert torch.equal(NoduleSpec().with_label_rule(fn).rule_labels(f2), y2)
    assert torch.equal(spec.rule_labels(f), y)
    cat = NoduleSpec(label_rule=Split("calcification", malignant_categories=("absent",)))
    f3, y3 = sample_factors(cat, 400, 0)
    assert int(y3.sum()) == 200 and torch.equal(y3, (f3["calcification"] == 0).long())


def test_per_index_purity_without_allocation() -> None:
    spec = NoduleSpec(malignant_fraction=None)
    small, y_small = sample_factors(spec, 50, 9)
    big, y_big = sample_factors(spec, 500, 9)
    for name in FACTORS:
        assert torch.equal(small[name], big[name][:50])
    assert torch.equal(y_small, y_big[:50])


BAD_SPECS = [
    (
        lambda: NoduleSpec(marginals={"diameter_mm": Uniform(1.0, 10.0)}),
        ValueError,
        "marginals['diameter_mm'] must lie in [3.0, 30.0] mm; got [1.0, 10.0]",
    ),
    (
        lambda: NoduleSpec(marginals={"size": Uniform(1.0, 10.0)}),
        ValueError,
        "marginals must be one of diameter_mm",
    ),
    (
        lambda: NoduleSpec(marginals={"texture": Uniform(0.0, 1.0)}),
        ValueError,
        "must be Categorical or Fixed",
    ),
    (
        lambda: NoduleSpec(marginals={"texture": Categorical({"fluffy": 1.0})}),
        ValueError,
        "got 'fluffy'",
    ),
    (lambda: NoduleSpec(marginals={"calcification": Fixed("bone")}), ValueError, "'bone'"),
    (
        lambda: NoduleSpec().with_shortcut("diameter_mm", 1.5),
        ValueError,
        "strength must lie in [-1.0, 1.0]; got 1.5",
    ),
    (
        lambda: NoduleSpec().with_shortcut("spiculation", 0.5),
        ValueError,
        "must not feed the label rule",
    ),
    (
        lambda: NoduleSpec().with_shortcut("diameter_mm", 0.5, threshold=40.0),
        ValueError,
        "threshold must lie in (3.0, 30.0)",
    ),
    (lambda: NoduleSpec().with_shortcut("diameter_mm", 0.5, threshold=25.0), ValueError, "no mass"),
    (
        lambda: NoduleSpec().with_shortcut("texture", 0.5, malignant_categories=("x",)),
        ValueError,
        "non-empty proper subset",
    ),
    (
        lambda: NoduleSpec().with_shortcut("attenuation_hu", 0.5),
        ValueError,
        "needs a Uniform marginal",
    ),
    (lambda: NoduleSpec().with_shortcut("colour", 0.5), ValueError, "got 'colour'"),
    (
        lambda: NoduleSpec(marginals={"spiculation": Uniform(0.0, 0.4)}),
        ValueError,
        "marginals['spiculation'] must give both classes",
    ),
    (lambda: NoduleSpec(label_noise=0.7), ValueError, "label_noise must lie in [0.0, 0.5]"),
    (lambda: NoduleSpec(malignant_fraction=1.2), ValueError, "malignant_fraction"),
    (
        lambda: NoduleSpec(label_rule=LinearLabelRule({"spiculation": 1.0}, 0.5)),
        ValueError,
        "malignant_fraction must be None",
    ),
    (
        lambda: NoduleSpec(label_rule=Split("spiculation", 1.5)),
        ValueError,
        "label_rule.threshold must lie in (0.0, 1.0)",
    ),
    (lambda: NoduleSpec().heldout(), ValueError, "at least one shortcut"),
    (
        lambda: NoduleSpec().with_shortcut("diameter_mm", 1).heldout(label=2),
        ValueError,
        "label must be 0 or 1; got 2",
    ),
    (
        lambda: NoduleSpec().with_shortcut("diameter_mm", 1).heldout("texture"),
        ValueError,
        "factor must be one of the shortcut factors",
    ),
    (
        lambda: NoduleSpec(shortcuts=(Shortcut(Split("diameter_mm", 10.0), 0.5),) * 2),
        ValueError,
        "distinct",
    ),
    (
        lambda: NoduleSpec(marginals={"attenuation_hu": ByCategory("texture", {})}),
        ValueError,
        "one entry per category",
    ),
    (
        lambda: NoduleSpec(marginals={"diameter_mm": 5.0}),
        TypeError,  # type: ignore[dict-item]
        "must be Uniform, LogUniform, Categorical, Fixed or ByCategory",
    ),
]


@pytest.mark.parametrize(("make", "exc", "fragment"), BAD_SPECS)
def test_bad_specs_raise_with_field_range_and_value(make, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        make()
    assert fragment in str(info.value)


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([f for f in FACTORS.values() if not f.is_categorical]),
    st.floats(-1e4, 1e4, allow_nan=False),
    st.floats(0.01, 1e3),
)
def test_out_of_range_uniforms_rejected(factor, low, width) -> None:
    dist = Uniform(low, low + width)
    inside = factor.low <= low and low + width <= factor.high
    if inside:
        spec = NoduleSpec(marginals={factor.name: dist}, malignant_fraction=None)
        assert spec.marginals[factor.name] == dist
    else:
        with pytest.raises(ValueError, match=rf"marginals\['{factor.name}'\] must lie in"):
            NoduleSpec(marginals={factor.name: dist}, malignant_fraction=None)


@settings(max_examples=30, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda s: not -1 <= s <= 1))
def test_out_of_range_strengths_rejected(strength: float) -> None:
    with pytest.raises(ValueError, match="strength must lie in"):
        NoduleSpec().with_shortcut("diameter_mm", strength)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 400),
    st.floats(-1, 1),
    st.sampled_from(["diameter_mm", "vessels", "lobulation", "texture"]),
)
def test_shortcut_counts_property(n: int, strength: float, factor: str) -> None:
    spec = NoduleSpec().with_shortcut(factor, strength)
    for agree, size in agree_counts(spec, n, n)[factor].values():
        assert agree == expected_agree(size, strength)


def test_describe_names_rule_shortcuts_and_changed_marginals() -> None:
    spec = NoduleSpec(label_noise=0.05).with_shortcut("texture", 0.5).covariate_shift()
    text = spec.describe()
    assert text.startswith("covariate: label: malignant iff spiculation > 0.5")
    assert "label noise 0.05" in text
    assert "shortcut texture in {solid, part-solid} strength +0.5" in text
    assert "non-default marginals: noise_hu, blur_mm, pixel_spacing_mm" in text


def test_screening_spec_skews_small_and_correlates_size_shape_and_label() -> None:
    from nodulebench.data import LogUniform

    spec = NoduleSpec.screening()
    assert spec.name == "screening" and NoduleSpec() != spec
    assert isinstance(spec.marginals["diameter_mm"], LogUniform)
    f, y = sample_factors(spec, 4000, 0)
    d = f["diameter_mm"]
    assert 0.25 < float((d < 6).float().mean()) < 0.35
    assert float(d.min()) >= 4.0 and float(d.max()) <= 30.0
    # log-uniform within each side of 8 mm: the median of the small side is sqrt(4 * 8)
    small = d[d <= 8]
    assert abs(float(small.median()) - math.sqrt(32)) < 0.15
    corr = torch.corrcoef(torch.stack([d.log(), f["spiculation"], f["lobulation"]]))
    assert float(corr[0, 1]) > 0.3 and float(corr[1, 2]) > 0.2
    assert torch.equal(y, (f["spiculation"] > 0.5).long()) and int(y.sum()) == 2000
    # the default spec stays independent
    f0, _ = sample_factors(NoduleSpec(), 4000, 0)
    c0 = torch.corrcoef(torch.stack([f0["diameter_mm"], f0["spiculation"]]))
    assert abs(float(c0[0, 1])) < 0.05


def test_log_uniform_rejects_bad_ranges() -> None:
    from nodulebench.data import LogUniform

    with pytest.raises(ValueError, match=r"marginals\['diameter_mm'\] must satisfy 0 < low"):
        NoduleSpec(marginals={"diameter_mm": LogUniform(10.0, 5.0)})
    with pytest.raises(ValueError, match="got \\[0.0, 1.0\\]"):
        NoduleSpec(marginals={"spiculation": LogUniform(0.0, 1.0)})
