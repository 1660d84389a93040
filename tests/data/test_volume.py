"""Volumes: one description, two samplers; the central slice is the 2-D image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed, measure_volume, rng
from nodulebench.data.render import MASK_NAMES

REFERENCE = Path(__file__).with_name("reference_2d_v3.npz")
# every context, calcification pattern and texture in twelve samples
CONTEXT = {
    "location": torch.tensor([0, 1, 2] * 4),
    "calcification": torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3, 6, 5, 1]),
    "fissure": torch.tensor([0, 1] * 6),
    "vessels": torch.tensor([2, 1, 0] * 4),
    "texture": torch.tensor([0, 1, 2, 1] * 3),
}


def test_2d_images_are_those_of_the_v3_renderer() -> None:
    # a pinned render of every context, pattern and texture (regenerate deliberately with
    # tests/data/regenerate_goldens.py and say why in CHANGELOG.md)
    ref = np.load(REFERENCE)
    ds = SyntheticNodules(n=64, seed=7, image_size=32, output="hu")
    hu, masks = ds.render(range(12), return_masks=True, overrides=CONTEXT)
    torch.testing.assert_close(hu, torch.from_numpy(ref["hu"]), rtol=0, atol=1e-3)
    for k in MASK_NAMES:
        assert torch.equal(masks[k], torch.from_numpy(ref[k])), k


@pytest.mark.parametrize("size", [16, 32])
def test_central_slice_of_a_thin_section_volume_is_the_2d_image(size: int) -> None:
    # a profile narrower than a third of a voxel is the identity: same description, same
    # noise keys, same operations; only FFT batch sizes differ (last bits)
    images = SyntheticNodules(n=64, seed=7, image_size=size, output="hu")
    volumes = SyntheticNodules(n=64, seed=7, volume_size=size, output="hu")
    thin = {**CONTEXT, "slice_thickness_mm": 0.5, "spiculation": torch.linspace(0, 1, 12)}
    hu, masks = images.render(range(12), return_masks=True, overrides=thin)
    vol, vmasks = volumes.render(range(12), return_masks=True, overrides=thin)
    assert vol.shape == (12, 1, size, size, size)
    torch.testing.assert_close(vol[:, :, size // 2], hu, rtol=0, atol=1e-3)
    for k in MASK_NAMES:
        assert torch.equal(vmasks[k][:, :, size // 2], masks[k]), k


def _reference_profile(hu: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Slice profile along axis 0 in float64, written from its definition."""
    sigma = fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / voxel_mm
    reach = int(math.floor(3 * sigma))
    j = np.arange(-reach, reach + 1)
    w = np.clip(np.exp(-0.5 * (j / sigma) ** 2) - math.exp(-4.5), 0, None)
    w /= w.sum()
    d = hu.shape[0]
    out = np.zeros_like(hu, dtype=np.float64)
    for offset, weight in zip(j, w, strict=True):
        out += weight * hu[np.clip(np.arange(d) + offset, 0, d - 1)]
    return out


def test_slice_thickness_is_a_gaussian_profile_along_z() -> None:
    # without noise, a thick volume is the thin one convolved along z with the profile
    spec = NoduleSpec(marginals={"noise_hu": Fixed(0.0), "site": Fixed("scanner_b")})
    ds = SyntheticNodules(spec, n=8, seed=3, volume_size=32, output="hu")
    thin = ds.render([1, 2], overrides={"slice_thickness_mm": 0.5}).double().numpy()
    for fwhm in (1.5, 3.0, 5.0):
        thick = ds.render([1, 2], overrides={"slice_thickness_mm": fwhm}).double().numpy()
        for row in range(2):
            voxel = float(ds.voxel_size_mm[row + 1, 0])
            ref = _reference_profile(thin[row, 0], fwhm, voxel)
            # the in-plane PSF is applied after the profile; both are linear and separate
            np.testing.assert_allclose(thick[row, 0], ref, rtol=0, atol=0.05)
        assert np.abs(thick - thin).max() > 50  # the profile does blur the nodule along z


def test_volume_contract() -> None:
    ds = SyntheticNodules(n=16, seed=1, volume_size=16, return_factors=True)
    vol, label, factors = ds[3]
    assert vol.shape == (1, 16, 16, 16) and vol.dtype == torch.float32
    assert 0.0 <= float(vol.min()) and float(vol.max()) <= 1.0
    assert label.dtype == torch.int64 and "slice_thickness_mm" in factors
    assert ds.sample_shape == (1, 16, 16, 16)
    torch.testing.assert_close(ds.voxel_size_mm[:, 0], ds.pixel_size_mm)
    assert "volume_size=16" in repr(ds)
    # same bytes for the same (spec, seed, index) in any order and batch
    batch = ds.render([5, 3, 9])
    again = SyntheticNodules(n=16, seed=1, volume_size=16).render([3])
    torch.testing.assert_close(batch[1], again[0], rtol=0, atol=1e-5)
    assert not torch.equal(batch[0], batch[1])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    vols, _, _ = next(iter(loader))
    assert vols.shape == (4, 1, 16, 16, 16)


def test_chunk_size_does_not_change_volumes() -> None:
    from nodulebench.data.render3d import render_volume_hu

    ds = SyntheticNodules(n=16, seed=4, volume_size=16)
    idx = torch.arange(6)
    f = {k: v[idx] for k, v in ds.factors.items()}
    f["slice_thickness_mm"] = torch.tensor([0.5, 5.0, 1.0, 3.0, 0.6, 2.0])
    one, _ = render_volume_hu(f, 4, idx, 16, chunk_size=1)
    six, _ = render_volume_hu(f, 4, idx, 16, chunk_size=6)
    torch.testing.assert_close(one, six, rtol=0, atol=1e-3)


def test_noise_is_independent_between_slices_and_texture_is_smooth() -> None:
    quiet = {
        "vessels": "none",
        "location": "isolated",
        "fissure": "absent",
        "slice_thickness_mm": 0.5,
    }
    spec = NoduleSpec(marginals={"background_texture_hu": Fixed(0.0)})
    ds = SyntheticNodules(spec, n=4, seed=2, volume_size=32, output="hu")
    vol = ds.render([0], overrides={**quiet, "noise_hu": 40.0, "offset_x_mm": -10.0})
    corner = vol[0, 0, :, :, 24:] - vol[0, 0, :, :, 24:].mean()  # away from the nodule
    a, b = corner[4:12].flatten(), corner[5:13].flatten()
    assert abs(float(torch.corrcoef(torch.stack((a, b)))[0, 1])) < 0.1
    textured = SyntheticNodules(n=4, seed=2, volume_size=32, output="hu").render(
        [0, 1, 2],
        overrides={**quiet, "noise_hu": 0.0, "background_texture_hu": 60.0, "offset_x_mm": -10.0},
    )
    field = textured[:, 0, :, :, 20:]  # away from the nodule
    along_z = (field[:, 1:] - field[:, :-1]).abs().mean()
    along_x = (field[..., 1:] - field[..., :-1]).abs().mean()
    assert 0.6 < float(along_z / along_x) < 1.4  # as smooth along z as in-plane


def test_planted_ball_measures_back() -> None:
    ds = SyntheticNodules(n=8, seed=5, volume_size=32, output="hu")
    ball = {
        "sphericity": 1.0,
        "lobulation": 0.0,
        "spiculation": 0.0,
        "diameter_mm": 14.0,
        "calcification": "absent",
        "texture": "solid",
    }
    vol, masks, used = ds.render(range(4), return_masks=True, overrides=ball, return_factors=True)
    m = measure_volume(vol, masks, ds.voxel_size_mm[:4], units="hu")
    # the median over the eroded body, off by noise and blur (here at most 12.4 HU)
    torch.testing.assert_close(m.attenuation_hu, used["attenuation_hu"], rtol=0, atol=15.0)
    expected = math.pi * 14.0**3 / 6
    assert torch.allclose(m.volume_mm3, torch.full((4,), expected), rtol=0.06)
    assert torch.allclose(m.diameter_mm, torch.full((4,), 14.0), atol=1.0)
    assert bool((m.sphericity > 0.92).all()) and bool((m.sphericity < 1.08).all())
    # an ellipsoid: its third axis lies between the in-plane ones, at an exogenous uniform
    fine = SyntheticNodules(n=8, seed=5, volume_size=64, output="hu")
    idx = torch.tensor([0, 1])
    vol, masks = fine.render(idx, return_masks=True, overrides={**ball, "sphericity": 0.5})
    m = measure_volume(vol, masks, fine.voxel_size_mm[idx], units="hu")
    u = rng.uniform(rng.key_words(5, idx, 102), 1, torch.float64)[:, 0]
    a, b = 7.0, 3.5
    c = b + (a - b) * u
    volume = 4 / 3 * math.pi * a * b * c
    p = 1.6075  # Knud Thomsen's formula for the area of an ellipsoid (within 1.1 %)
    area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    sphericity = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area
    torch.testing.assert_close(m.volume_mm3.double(), volume, rtol=0.05, atol=0)
    torch.testing.assert_close(m.sphericity.double(), sphericity, rtol=0, atol=0.04)
    assert bool((m.sphericity < 0.97).all())


def test_spicules_are_tubes_and_grow_with_spiculation() -> None:
    ds = SyntheticNodules(n=8, seed=6, volume_size=32, output="hu")
    vols = []
    for s in (0.0, 0.6, 1.0):
        _, masks = ds.render(range(4), return_masks=True, overrides={"spiculation": s})
        vols.append(masks["spicules"].flatten(1).sum(1))
    assert int(vols[0].sum()) == 0
    assert bool((vols[2] >= vols[1]).all()) and int(vols[2].sum()) > int(vols[1].sum()) > 0
    # a tube of the in-plane set is seen in the slices next to the central one, thinner
    _, masks = ds.render([0], return_masks=True, overrides={"spiculation": 1.0, "diameter_mm": 6.0})
    per_slice = masks["spicules"][0, 0].flatten(1).sum(1)
    assert int(per_slice[16]) > 0
    # the oblique set leaves the body upwards and downwards, beyond the body's top and bottom
    body_slices = torch.nonzero(masks["body"][0, 0].flatten(1).any(1)).flatten()
    assert int(per_slice[int(body_slices.max()) + 1 :].sum()) > 0
    assert int(per_slice[: int(body_slices.min())].sum()) > 0


def test_volumes_materialize_and_reload(tmp_path: Path) -> None:
    ds = SyntheticNodules(n=6, seed=6, volume_size=16)
    ds.materialize(tmp_path / "v", batch_size=4)
    cached = SyntheticNodules(n=6, seed=6, volume_size=16, cache=tmp_path / "v")
    # batches of 4 then 2 against one of 6: FFT batch sizes change the last bits only
    torch.testing.assert_close(cached.render(range(6)), ds.render(range(6)), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="volume_size must be None; got 16"):
        SyntheticNodules(n=6, seed=6, image_size=16, cache=tmp_path / "v")


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"volume_size": 8}, ValueError, "volume_size must be an int in [16, 256]; got 8"),
        ({"volume_size": 32.0}, TypeError, "volume_size must be an int; got float"),
        (
            {"volume_size": 32, "image_size": 48},
            ValueError,
            "image_size must be left at 64 or equal volume_size",
        ),
    ],
)
def test_bad_volume_arguments_raise(kwargs, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        SyntheticNodules(**{"n": 4, **kwargs})
    assert fragment in str(info.value)


def test_bad_volume_values_raise() -> None:
    ds = SyntheticNodules(n=4, volume_size=16)
    with pytest.raises(
        ValueError,
        match=r"overrides\['slice_thickness_mm'\] must lie in "
        r"\[0.5, 5.0\] mm; got 9.0",
    ):
        ds.intervene(0, slice_thickness_mm=9.0)
    with pytest.raises(ValueError, match="voxel_size_mm needs a volume dataset"):
        _ = SyntheticNodules(n=4).voxel_size_mm
    vol, masks = ds.render([0, 1], return_masks=True)
    with pytest.raises(ValueError, match=r"volume must have shape \(1, D, H, W\)"):
        measure_volume(vol[:, 0, 0], masks, 1.0)
    with pytest.raises(ValueError, match="voxel_size_mm must be a positive float"):
        measure_volume(vol, masks, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="masks must contain 'nodule'"):
        measure_volume(vol, {}, 1.0)
    with pytest.raises(ValueError, match=r"masks\['vessels'\] must have the volume's shape"):
        measure_volume(vol, {**masks, "vessels": masks["vessels"][:1]}, 1.0)
    with pytest.raises(ValueError, match="volumes \\[1\\] are empty"):
        measure_volume(
            vol,
            {"nodule": torch.stack((masks["nodule"][0], torch.zeros_like(masks["nodule"][0])))},
            1.0,
        )


@pytest.mark.gpu
def test_volumes_cpu_and_cuda_agree() -> None:
    ds = SyntheticNodules(
        NoduleSpec().with_shortcut("calcification", 0.5), n=16, seed=0, volume_size=32
    )
    idx = list(range(16))
    cpu, cpu_masks = ds.render(idx, return_masks=True)
    gpu, gpu_masks = ds.render(idx, device="cuda", return_masks=True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)
    for k in cpu_masks:
        # a voxel centre exactly on an outline may fall either way
        assert int((gpu_masks[k].cpu() != cpu_masks[k]).sum()) <= 64, k


def test_volume_datasets_pickle_and_take_shortcuts() -> None:
    import pickle

    spec = NoduleSpec().with_shortcut("slice_thickness_mm", 0.8)
    ds = SyntheticNodules(spec, n=40, seed=9, volume_size=16)
    again = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(again.render([3, 7]), ds.render([3, 7]), rtol=0, atol=0)
    # thick slices go with one class in exactly (1 + 0.8) / 2 of each class
    thick = ds.factors["slice_thickness_mm"] > 1.8  # the median of uniform 0.6 - 3.0
    agree = (thick == ds.labels.bool()).float().mean()
    assert float(agree) == pytest.approx(0.9)
    test = SyntheticNodules(spec.test_distributions()["reversed"], n=40, seed=10, volume_size=16)
    flipped = (test.factors["slice_thickness_mm"] > 1.8) == test.labels.bool()
    assert float(flipped.float().mean()) == pytest.approx(0.1)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32), index=st.integers(0, 999), size=st.sampled_from([16, 32]))
def test_any_thin_volume_holds_its_2d_image(seed: int, index: int, size: int) -> None:
    # profiles up to 0.7 mm are the identity at 16 and 32 voxels (voxels of >= 0.92 mm)
    thin = {"slice_thickness_mm": 0.7}
    image = SyntheticNodules(n=1000, seed=seed, image_size=size, output="hu").render(
        [index], overrides=thin
    )
    volume = SyntheticNodules(n=1000, seed=seed, volume_size=size, output="hu").render(
        [index], overrides=thin
    )
    torch.testing.assert_close(volume[:, :, size // 2], image, rtol=0, atol=1e-3)
