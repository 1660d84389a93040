"""Physical fidelity: one object at every output size, benign looks benign, ground glass
lets vessels through, calcification and acquisition factors do what they say."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed
from nodulebench.data.factors import KERNELS
from nodulebench.data.geometry import spicule_count

# no texture, vessels, context, blur or noise: the image is the object and its partial volume
QUIET = {
    "background_texture_hu": Fixed(0.0),
    "vessels": Fixed("none"),
    "blur_mm": Fixed(0.0),
    "noise_hu": Fixed(0.0),
    "calcification": Fixed("absent"),
    "texture": Fixed("solid"),
    "location": Fixed("isolated"),
    "fissure": Fixed("absent"),
}


def _spicule_area_mm2(ds: SyntheticNodules, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Spicule area from the image alone: HU added by the spicules over their contrast."""
    spiky = ds.render(idx)
    plain = ds.render(idx, overrides={"spiculation": 0.0})
    f = ds.factors
    contrast = (f["attenuation_hu"] - f["background_hu"])[idx]
    area = (spiky - plain).flatten(1).sum(1) * ds.pixel_size_mm[idx] ** 2 / contrast
    return area, spiky


def test_same_spicule_area_and_same_image_at_every_size() -> None:
    spec = NoduleSpec(marginals={**QUIET, "attenuation_hu": Fixed(40.0)})
    idx = list(range(40))
    areas, images = {}, {}
    for size in (32, 64, 128):
        ds = SyntheticNodules(spec, n=40, seed=3, image_size=size, output="hu")
        areas[size], images[size] = _spicule_area_mm2(ds, idx)
    total = {size: float(a.sum()) for size, a in areas.items()}
    assert total[128] > 100.0  # the planted spicules are there
    for size in (32, 64):
        assert abs(total[size] - total[128]) < 0.1 * total[128]
    # per nodule too, for the well-spiculated ones
    big = areas[128] > 10.0
    rel = (areas[32][big] - areas[128][big]).abs() / areas[128][big]
    assert float(rel.median()) < 0.1
    # the 32 px image is close to the area-average of the 128 px one (contrast ~900 HU)
    pooled = F.avg_pool2d(images[128], 4)
    assert float((images[32] - pooled).abs().mean()) < 5.0
    assert float((images[32] - pooled).abs().quantile(0.99)) < 60.0


def test_thin_spicules_stay_thin_at_coarse_pixels() -> None:
    # a strand thinner than a pixel adds less than a pixel's worth of contrast per pixel
    spec = NoduleSpec(
        marginals={
            **QUIET,
            "attenuation_hu": Fixed(40.0),
            "spiculation": Fixed(1.0),
            "pixel_spacing_mm": Fixed(0.9),
        },
        malignant_fraction=None,
    )
    ds = SyntheticNodules(spec, n=8, seed=1, image_size=32, output="hu")
    hu, masks = ds.render(range(8), return_masks=True)
    spic = masks["spicules"]
    assert bool(spic.flatten(1).any(1).all())
    full = (ds.factors["attenuation_hu"] - ds.factors["background_hu"])[:, None, None, None]
    fraction = (hu - ds.factors["background_hu"][:, None, None, None]) / full
    assert float(fraction[spic].median()) < 0.6


def test_most_default_benign_nodules_have_no_spicule() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=400, seed=0)
    counts = spicule_count(ds.factors["spiculation"])
    benign = ds.labels == 0
    assert float((counts[benign] == 0).float().mean()) >= 0.5
    assert bool((counts[~benign] >= 5).all())
    # the label is still exactly the rule
    assert torch.equal(ds.labels, (ds.factors["spiculation"] > 0.5).long())
    # and an image without spicules has an empty spicule mask
    none = torch.nonzero(benign & (counts == 0)).flatten()[:8].tolist()
    _, masks = ds.render(none, return_masks=True)
    assert not bool(masks["spicules"].any())


def test_spicule_count_follows_the_documented_onsets() -> None:
    s = torch.tensor([0.0, 0.25, 0.2501, 0.33, 0.65, 1.0])
    assert spicule_count(s).tolist() == [0, 0, 1, 2, 6, 10]


def test_vessels_show_through_ground_glass_not_through_solid() -> None:
    base = {
        **QUIET,
        "vessels": Fixed("many"),
        "diameter_mm": Fixed(16.0),
        "offset_x_mm": Fixed(0.0),
        "offset_y_mm": Fixed(0.0),
    }
    for texture, attenuation in (("ground-glass", -650.0), ("solid", 40.0)):
        spec = NoduleSpec(
            marginals={**base, "texture": Fixed(texture), "attenuation_hu": Fixed(attenuation)}
        )
        ds = SyntheticNodules(spec, n=16, seed=5, output="hu")
        hu, masks = ds.render(range(16), return_masks=True)
        plain = ds.render(range(16), overrides={"vessels": "none"})
        interior = ~F.max_pool2d((~masks["body"]).float(), 5, 1, 2).bool()  # off the edge
        inside = interior & masks["vessels"]
        assert int(inside.sum()) > 20
        lift = (hu - plain)[inside]
        if texture == "ground-glass":
            assert float(lift.median()) > 100.0  # the vessel is visible in the nodule
        else:
            assert float(lift.abs().max()) < 2.0  # hidden in solid tissue (PSF ringing aside)


@pytest.mark.parametrize("texture", ["solid", "part-solid", "ground-glass"])
def test_nothing_is_brighter_than_the_body_except_calcification(texture: str) -> None:
    spec = NoduleSpec(
        marginals={
            **QUIET,
            "texture": Fixed(texture),
            "spiculation": Fixed(1.0),
            "vessels": Fixed("many"),
        },
        malignant_fraction=None,
    )
    ds = SyntheticNodules(spec, n=12, seed=2, output="hu")
    hu, masks = ds.render(range(12), return_masks=True, overrides={"vessels": "none"})
    att = ds.factors["attenuation_hu"]
    ceiling = torch.clamp(att, min=40.0) if texture == "part-solid" else att
    ceiling = torch.maximum(ceiling, ds.factors["background_hu"])
    # the band-limited point-spread function rings by about 1 % of the edge contrast;
    # spicules drawn denser than a ground-glass body would stand out by hundreds of HU
    ringing = 0.015 * (ceiling - ds.factors["background_hu"]) + 1.0
    for k in range(12):
        assert float(hu[k][masks["nodule"][k]].max()) <= float(ceiling[k] + ringing[k])
    # calcification is the exception
    calcified = ds.render(
        range(12),
        overrides={"vessels": "none", "calcification": "popcorn", "calcification_hu": 800.0},
    )
    assert bool((calcified.flatten(1).amax(1) > ceiling + 100).all())


def test_solid_core_position_and_size_vary() -> None:
    spec = NoduleSpec(
        marginals={
            **QUIET,
            "texture": Fixed("part-solid"),
            "attenuation_hu": Fixed(-600.0),
            "diameter_mm": Fixed(18.0),
            "sphericity": Fixed(1.0),
            "lobulation": Fixed(0.0),
            "offset_x_mm": Fixed(0.0),
            "offset_y_mm": Fixed(0.0),
        }
    )
    ds = SyntheticNodules(spec, n=16, seed=4, output="hu")
    hu = ds.render(range(16))
    core = hu[:, 0] > -200.0
    area = core.flatten(1).sum(1).float()
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cx = (core * xs).flatten(1).sum(1) / area
    assert float(area.std()) > 0.15 * float(area.mean())
    assert float(cx.std()) > 1.0


def test_calcification_hu_is_a_factor() -> None:
    spec = NoduleSpec(
        marginals={**QUIET, "calcification": Fixed("central"), "diameter_mm": Fixed(16.0)}
    )
    ds = SyntheticNodules(spec, n=4, seed=0, output="hu")
    for value in (200.0, 900.0):
        hu, masks = ds.render(range(4), return_masks=True, overrides={"calcification_hu": value})
        core = masks["calcification"] & ~(
            F.max_pool2d((~masks["calcification"]).float(), 5, 1, 2).bool()
        )
        assert abs(float(hu[core].median()) - value) < 5.0


@pytest.mark.parametrize(("pattern", "blobs"), [("eccentric", 1), ("stippled", 3)])
def test_eccentric_and_stippled_patterns(pattern: str, blobs: int) -> None:
    spec = NoduleSpec(
        marginals={
            **QUIET,
            "calcification": Fixed(pattern),
            "diameter_mm": Fixed(20.0),
            "offset_x_mm": Fixed(0.0),
            "offset_y_mm": Fixed(0.0),
        }
    )
    ds = SyntheticNodules(spec, n=6, seed=9, image_size=128)
    _, masks = ds.render(range(6), return_masks=True)
    calc = masks["calcification"][:, 0].float()
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    area = calc.flatten(1).sum(1)
    assert bool((area > 0).all())
    # connected parts, counted by a few rounds of label propagation
    labels = torch.where(calc > 0, (ys * 128 + xs + 1)[None].expand_as(calc), 0.0)
    for _ in range(64):
        labels = torch.where(calc > 0, F.max_pool2d(labels[:, None], 3, 1, 1)[:, 0], 0.0)
    parts = [len(torch.unique(labels[k][labels[k] > 0])) for k in range(6)]
    if pattern == "eccentric":
        assert parts == [1] * 6
        cy = (calc * ys).flatten(1).sum(1) / area - 63.5
        cx = (calc * xs).flatten(1).sum(1) / area - 63.5
        assert bool((torch.sqrt(cx**2 + cy**2) > 5).all())  # off-centre
    else:
        assert min(parts) >= blobs


def test_kernels_shape_the_noise_spectrum() -> None:
    spec = NoduleSpec(marginals={**QUIET, "noise_hu": Fixed(30.0), "pixel_spacing_mm": Fixed(0.7)})
    ds = SyntheticNodules(spec, n=16, seed=0, output="hu")
    centroids = []
    for kernel in KERNELS:
        clean = ds.render(range(16), overrides={"kernel": kernel, "noise_hu": 0.0})
        noise = ds.render(range(16), overrides={"kernel": kernel}) - clean
        assert abs(float(noise.std()) - 30.0) < 3.0  # dose sets the level, not the kernel
        power = torch.fft.rfft2(noise[:, 0]).abs().pow(2).mean(0)
        f = torch.sqrt(torch.fft.fftfreq(64)[:, None] ** 2 + torch.fft.rfftfreq(64)[None] ** 2)
        centroids.append(float((power * f).sum() / power.sum()))
    assert centroids[0] < centroids[1] < centroids[2]  # smooth < standard < sharp


def test_site_shortcut_moves_the_acquisition() -> None:
    spec = NoduleSpec().with_shortcut("site", 0.9)
    ds = SyntheticNodules(spec, n=400, seed=0)
    malignant_site = torch.isin(ds.factors["site"], torch.tensor([2, 3]))
    agree = (malignant_site == ds.labels.bool()).float().mean()
    assert abs(float(agree) - 0.95) < 0.01
    # the site's bundle follows it: scanner_c is the low-dose one, scanner_d the sharp one
    noise = ds.factors["noise_hu"]
    assert float(noise[ds.factors["site"] == 2].min()) >= 28.0
    assert bool((ds.factors["kernel"][ds.factors["site"] == 3] == 2).all())
    # an intervention on the site re-derives its bundle from the same exogenous noise
    _, factors = ds.render([0, 1], overrides={"site": "scanner_c"}, return_factors=True)
    assert bool((factors["noise_hu"] >= 28.0).all())


def test_context_locations_touch_the_body() -> None:
    ds = SyntheticNodules(NoduleSpec(marginals={"vessels": Fixed("none")}), n=24, seed=6)
    near_vessel, near_wall = [], []
    for location in ("isolated", "juxta-vascular", "juxta-pleural"):
        _, masks = ds.render(range(24), return_masks=True, overrides={"location": location})
        near = F.max_pool2d(masks["body"].float(), 5, 1, 2).bool()
        near_vessel.append(float((near & masks["vessels"]).flatten(1).any(1).float().mean()))
        near_wall.append(float((near & masks["pleura"]).flatten(1).any(1).float().mean()))
        assert not bool((masks["pleura"] & masks["body"] & ~near).any())
    # with "vessels" none, only a juxta-vascular nodule has a vessel, and it touches the body
    assert near_vessel == [0.0, pytest.approx(near_vessel[1]), 0.0] and near_vessel[1] >= 0.9
    assert near_wall == [0.0, 0.0, 1.0]


def test_chest_wall_is_muscle_and_fissure_is_a_thin_line() -> None:
    spec = NoduleSpec(marginals={**QUIET, "location": Fixed("juxta-pleural")})
    ds = SyntheticNodules(spec, n=8, seed=2, output="hu")
    hu, masks = ds.render(range(8), return_masks=True)
    deep = ~F.max_pool2d((~masks["pleura"]).float(), 5, 1, 2).bool() & ~masks["nodule"]
    assert abs(float(hu[deep].median()) - 40.0) < 2.0
    plain = ds.render(range(8), overrides={"location": "isolated"})
    lined = ds.render(range(8), overrides={"location": "isolated", "fissure": "present"})
    lift = (lined - plain)[:, 0]
    touched = (lift > 20).flatten(1).sum(1).float()
    # a line across the patch, partial-volume averaged over about two pixels
    assert bool((touched > 32).all()) and bool((touched < 4 * 64).all())


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"location": "pleural"}, ("overrides['location']", "'pleural'")),
        ({"calcification_hu": 50.0}, ("overrides['calcification_hu']", "[150.0, 1000.0]", "50.0")),
        ({"kernel": 3}, ("overrides['kernel']", "[0, 2]")),
        ({"site": "scanner_e"}, ("overrides['site']", "'scanner_e'")),
        ({"fissure": 1.5}, ("overrides['fissure']", "[0, 1]")),
    ],
)
def test_bad_values_of_new_factors_are_named(changes: dict, fragments: tuple) -> None:
    # the argument, what was expected and what was received
    ds = SyntheticNodules(n=2, image_size=16)
    with pytest.raises(ValueError) as info:
        ds.intervene(0, **changes)
    for fragment in fragments:
        assert fragment in str(info.value)
