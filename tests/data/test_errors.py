"""Bad input to the data API gets a named error: argument, expectation, what was received."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import CLASSES, Categorical, Split, Uniform
from nodulebench.probing import intervention_sensitivity

DS = SyntheticNodules(n=8, seed=1, image_size=16)


def _raises(error: type[Exception], message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match=re.escape(message))


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Uniform("5", 20), TypeError, "Uniform low must be a real number; got str '5'"),
        (lambda: Uniform(5, "20"), TypeError, "Uniform high must be a real number; got str '20'"),
        (
            lambda: Uniform(5, 20, exclude=(8, "9")),
            TypeError,
            "Uniform exclude must be a real number; got str '9'",
        ),
        (
            lambda: Uniform(5, 20, exclude=8),
            TypeError,
            "Uniform exclude must be a pair (a, b) or None; got 8",
        ),
        (lambda: Uniform(True, 20), TypeError, "Uniform low must be a real number; got bool"),
        (lambda: Uniform(20, 5), ValueError, "Uniform low must be <= high; got low=20 > high=5"),
        (
            lambda: Categorical((("solid",),)),
            TypeError,
            "Categorical weights must be (category name, number) pairs; got ('solid',)",
        ),
        (
            lambda: Categorical((("solid", "0.6"),)),
            TypeError,
            "Categorical weights must be (category name, number) pairs; got ('solid', '0.6')",
        ),
        (
            lambda: Categorical({"solid": None}),
            TypeError,
            "Categorical weights must be (category name, number) pairs; got ('solid', None)",
        ),
        (
            lambda: Categorical("solid"),
            TypeError,
            "Categorical weights must be a mapping {category: weight} or a tuple of (category, "
            "weight) pairs; got str 'solid'",
        ),
        (
            lambda: Split("diameter_mm", "10"),
            TypeError,
            "Split threshold must be a real number; got str '10'",
        ),
        (
            lambda: NoduleSpec().with_shortcut("diameter_mm", 0.5, threshold="10"),
            TypeError,
            "Split threshold must be a real number; got str '10'",
        ),
    ],
)
def test_distribution_constructors_check_their_arguments(build, error, message) -> None:  # type: ignore[no-untyped-def]
    with _raises(error, message):
        build()


def test_valid_distributions_still_build() -> None:
    assert Uniform(5, 5).intervals() == ((5, 5),)
    assert Categorical([["solid", 1], ["ground-glass", 0.5]]).weights == (
        ("solid", 1),
        ("ground-glass", 0.5),
    )
    # a restriction with no mass keeps its own message (not "low must be <= high")
    with pytest.raises(ValueError, match="malignant-looking side of diameter_mm > 25 has no"):
        Uniform(5.0, 20.0).restrict(Split("diameter_mm", 25.0), True)


@pytest.mark.parametrize(
    ("build", "hint"),
    [
        (lambda: NoduleSpec(marginals={"diamter_mm": Uniform(5, 20)}), "'diameter_mm'"),
        (lambda: NoduleSpec().with_marginals(spiculaton=Uniform(0, 1)), "'spiculation'"),
        (lambda: NoduleSpec().with_shortcut("calcificaton", 0.5), "'calcification'"),
        (lambda: DS.traverse(0, "lobulaton", [0.1, 0.2]), "'lobulation'"),
        (lambda: DS.intervene(0, diamter_mm=10.0), "'diameter_mm'"),
        (lambda: DS.render([0], overrides={"nois_hu": 5.0}), "'noise_hu'"),
        (lambda: DS.traverse(0, "texture", ["solod"]), "'solid'"),
        (lambda: DS.intervene(0, calcification="centrl"), "'central'"),
    ],
)
def test_misspelt_names_get_a_hint(build, hint: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=re.escape(f"(did you mean {hint}?)")):
        build()


def test_materialize_batch_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _raises(ValueError, "batch_size must be an int >= 1; got 0"):
        DS.materialize(tmp_path / "c", batch_size=0)


def test_traverse_values() -> None:
    with _raises(
        ValueError,
        "values[1] for texture must be one of ('solid', 'part-solid', 'ground-glass'); got 'rock'",
    ):
        DS.traverse(0, "texture", ["solid", "rock"])
    with _raises(
        ValueError,
        "values[0] for diameter_mm must be a number in [3.0, 30.0] mm "
        "for the continuous factor diameter_mm; got 'big'",
    ):
        DS.traverse(0, "diameter_mm", ["big"])
    with _raises(TypeError, "values must hold numbers or category names; got [None]"):
        DS.traverse(0, "diameter_mm", [None])
    with _raises(TypeError, "values must be a sequence of values; got the string 'solid'"):
        DS.traverse(0, "texture", "solid")
    assert DS.traverse(0, "texture", ["solid", 2]).shape == (2, 1, 16, 16)


def test_intervene_values() -> None:
    with _raises(
        ValueError,
        "overrides['diameter_mm'] must be a number in [3.0, 30.0] mm "
        "for the continuous factor diameter_mm; got 'big'",
    ):
        DS.intervene(0, diameter_mm="big")
    with _raises(
        TypeError,
        "overrides['diameter_mm'] must be a number, a category name or a tensor; got NoneType",
    ):
        DS.intervene(0, diameter_mm=None)  # type: ignore[arg-type]
    with _raises(
        ValueError, "overrides['vessels'] must be one of ('none', 'few', 'many'); got 'lots'"
    ):
        DS.intervene(0, vessels="lots")


@pytest.mark.parametrize("bad_device", ["nvidia", "cuda:99", 3.5])
def test_render_on_a_missing_device(bad_device: object) -> None:
    if bad_device == "cuda:99" and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("this machine has 100 GPUs")
    with pytest.raises(
        ValueError,
        match=re.escape(f"device must be a device available on this machine; got {bad_device!r} ("),
    ):
        DS.render([0], device=bad_device)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_render_on_cuda_without_cuda() -> None:
    with _raises(ValueError, "device must be a device available on this machine; got 'cuda'"):
        DS.render([0], device="cuda")


def test_verify_cache_is_checked_without_a_cache() -> None:
    with _raises(ValueError, "verify_cache must be one of 'full', 'size'; got 'hash'"):
        SyntheticNodules(n=4, verify_cache="hash")  # type: ignore[arg-type]


def test_classes_and_targets_as_in_torchvision() -> None:
    ds = SyntheticNodules(n=10, seed=2, image_size=16)
    assert ds.classes == ["benign", "malignant"] == list(CLASSES)
    assert ds.class_to_idx == {"benign": 0, "malignant": 1}
    assert ds.targets is ds.labels and ds.targets.dtype == torch.int64
    labelled = ds.spec.rule_labels(ds.factors)  # the rule, independently of the allocation
    assert torch.equal(ds.targets, labelled)
    assert [ds.classes[int(t)] for t in ds.targets].count("malignant") == 5
    ds.classes.append("other")  # a copy: the dataset's classes do not change
    assert ds.classes == ["benign", "malignant"]


def test_intervention_sensitivity_needs_a_generator() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
    data = TensorDataset(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with _raises(
        TypeError,
        "dataset must provide factors, __len__ and render(indices, "
        "device, return_masks, overrides), as SyntheticNodules does",
    ):
        intervention_sensitivity(model, data)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("(did you mean 'diameter_mm'?)")):
        intervention_sensitivity(model, DS, factors=["diamter_mm"], n=4)
    with pytest.raises(ValueError, match=re.escape("(did you mean 'central'?)")):
        intervention_sensitivity(
            model,
            DS,
            factors=["calcification"],
            n=4,
            values={"calcification": ["absent", "centrl"]},
        )
