"""Perturb, then measure: every factor set through an intervention is measured back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed, Uniform, measure

# plain solid nodules: no lobulation or spicules to change the outline, no calcification;
# a faint parenchymal texture, since ground glass lets it show through, and moderate noise
PLAIN = NoduleSpec(
    marginals={
        "spiculation": Fixed(0.0),
        "lobulation": Fixed(0.0),
        "texture": Fixed("solid"),
        "calcification": Fixed("absent"),
        "background_texture_hu": Fixed(10.0),
        "noise_hu": Fixed(15.0),
    },
    malignant_fraction=None,
)


@pytest.fixture(scope="module")
def ds() -> SyntheticNodules:
    return SyntheticNodules(PLAIN, n=12, seed=11, image_size=64)


def _measure(ds: SyntheticNodules, i: int, **changes: float) -> dict[str, float]:
    k = [i] * 1
    images, masks = ds.render(k, return_masks=True, overrides=changes)
    m = measure(images, masks, ds.pixel_size_mm[k])
    return {name: float(v[0]) for name, v in m.as_dict().items()}


@pytest.mark.parametrize("diameter", [6.0, 9.5, 14.0, 21.0, 28.0])
def test_diameter_round_trip(ds: SyntheticNodules, diameter: float) -> None:
    for i in range(3):
        got = _measure(ds, i, diameter_mm=diameter, offset_x_mm=0.0, offset_y_mm=0.0)
        pixel = float(ds.pixel_size_mm[i])
        assert abs(got["diameter_mm"] - diameter) <= 1.0 * pixel
        assert abs(got["equivalent_diameter_mm"] - diameter) <= 0.65 * pixel


@pytest.mark.parametrize("sphericity", [0.45, 0.6, 0.8, 1.0])
def test_sphericity_and_orientation_round_trip(ds: SyntheticNodules, sphericity: float) -> None:
    for i, angle in zip(range(3), (10.0, 75.0, 140.0), strict=True):
        got = _measure(ds, i, diameter_mm=16.0, sphericity=sphericity, orientation_deg=angle)
        assert abs(got["sphericity"] - sphericity) < 0.04
        if sphericity < 0.9:
            err = abs(got["orientation_deg"] - angle) % 180
            assert min(err, 180 - err) < 4.0


@pytest.mark.parametrize("attenuation", [-750.0, -500.0, -100.0, 40.0, 120.0])
def test_attenuation_round_trip(ds: SyntheticNodules, attenuation: float) -> None:
    for i in range(3):
        got = _measure(ds, i, diameter_mm=12.0, attenuation_hu=attenuation)
        # a median over ~100 pixels of correlated noise with std 15 HU
        assert abs(got["attenuation_hu"] - attenuation) < 12.0


def test_attenuation_ignores_calcification_and_spicules(ds: SyntheticNodules) -> None:
    got = _measure(ds, 0, diameter_mm=18.0, attenuation_hu=30.0, calcification=1, spiculation=1.0)
    assert abs(got["attenuation_hu"] - 30.0) < 12.0
    assert got["spicule_area_mm2"] > 5.0


def test_measure_on_hu_images_and_single_image() -> None:
    hu_ds = SyntheticNodules(PLAIN, n=2, seed=0, output="hu")
    images, masks = hu_ds.render(
        [1], return_masks=True, overrides={"attenuation_hu": -600.0, "diameter_mm": 15.0}
    )
    single = measure(
        images[0], {k: v[0] for k, v in masks.items()}, float(hu_ds.pixel_size_mm[1]), units="hu"
    )
    assert single.attenuation_hu.shape == (1,)
    # one image of coarse-grained noise (std 15 HU): the median is within about one std
    assert abs(float(single.attenuation_hu[0]) + 600.0) < 18.0


def test_measured_factors_track_the_table_at_32_pixels() -> None:
    spec = PLAIN.with_marginals(diameter_mm=Uniform(10.0, 25.0))
    ds = SyntheticNodules(spec, n=40, seed=5, image_size=32)
    images, masks = ds.render(range(40), return_masks=True)
    m = measure(images, masks, ds.pixel_size_mm)
    pixel = ds.pixel_size_mm
    assert bool(((m.equivalent_diameter_mm - ds.factors["diameter_mm"]).abs() <= pixel).all())
    assert float((m.sphericity - ds.factors["sphericity"]).abs().mean()) < 0.04


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (lambda img, m: measure(img, {}, 0.7), ValueError, "masks must contain 'nodule'"),
        (
            lambda img, m: measure(img[0, 0], m, 0.7),
            ValueError,
            "image must have shape (1, H, W) or (N, 1, H, W); got shape (16, 16)",
        ),
        (lambda img, m: measure(img, m, -1.0), ValueError, "pixel_spacing_mm must be"),
        (lambda img, m: measure(img, m, torch.ones(3)), ValueError, "(2,) tensor"),
        (
            lambda img, m: measure(img, {"nodule": torch.zeros_like(m["nodule"])}, 0.7),
            ValueError,
            "images [0, 1] are empty",
        ),
        (
            lambda img, m: measure(img, {"nodule": m["nodule"][:1]}, 0.7),
            ValueError,
            "must have the image's shape",
        ),
        (lambda img, m: measure(img, m, 0.7, units="mm"), ValueError, "units must be one of"),
    ],
)
def test_measure_bad_input(call, exc, fragment) -> None:
    ds = SyntheticNodules(PLAIN, n=2, image_size=16)
    images, masks = ds.render([0, 1], return_masks=True)
    with pytest.raises(exc) as info:
        call(images, masks)
    assert fragment in str(info.value)


def test_covered_bodies_have_nan_attenuation_and_leave_the_batch_alone() -> None:
    """Default nodules at 32 px: in 2000 samples, four have every body pixel under a vessel
    or calcification mask. Their attenuation is NaN (nothing uncalcified to measure); a
    small nodule's lighter erosion does not change how the others are measured."""
    ds = SyntheticNodules(NoduleSpec(), n=2000, seed=0, image_size=32)
    covered = [267, 789, 1852, 1901]
    batch = [*covered, *range(40)]
    images, masks = ds.render(batch, return_masks=True)
    region = (
        masks["nodule"]
        & ~masks["spicules"]
        & ~masks["calcification"]
        & ~masks["vessels"]
        & ~masks["pleura"]
    )
    visible = region.flatten(1).sum(1)
    assert visible[:4].tolist() == [0, 0, 0, 0] and bool((visible[4:] > 0).all())
    # Planted: some nodule of the batch has no pixel left after two pixels of erosion.
    deep = ~F.max_pool2d((~region[4:]).double(), 5, 1, 2).bool()
    assert not bool(deep.flatten(1).any(1).all())
    together = measure(images, masks, ds.pixel_size_mm[batch]).attenuation_hu
    assert bool(together[:4].isnan().all()) and bool(together[4:].isfinite().all())
    alone = torch.stack(
        [
            measure(
                images[k : k + 1],
                {name: m[k : k + 1] for name, m in masks.items()},
                ds.pixel_size_mm[batch[k]],
            ).attenuation_hu[0]
            for k in range(len(batch))
        ]
    )
    torch.testing.assert_close(together, alone, equal_nan=True, rtol=0, atol=0)
