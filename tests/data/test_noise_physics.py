"""Acquisition noise is a field of the scan in millimetres, read back from images alone.

Every check below measures rescans of the same objects with ``noise_texture`` (an
autocorrelation of the images): nothing reuses the renderer's spectrum formula.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import noise_texture
from nodulebench.data.factors import Kernel
from nodulebench.data.render import noise_power
from nodulebench.data.spec import Fixed

NOISE_HU = 60.0
SPEC = NoduleSpec(
    marginals={
        "noise_hu": Fixed(NOISE_HU),
        "pixel_spacing_mm": Fixed(0.7),
        "blur_mm": Fixed(0.0),
    }
)


def _noise(kernel: str, size: int, n: int = 12, volume: bool = False) -> torch.Tensor:
    """A pure noise field from two rescans of the same objects (unit-variance scaled)."""
    if volume:
        ds = SyntheticNodules(SPEC, n=n, seed=5, volume_size=size, output="hu")
    else:
        ds = SyntheticNodules(SPEC, n=n, seed=5, image_size=size, output="hu")
    over = {"kernel": kernel}
    first = ds.render(range(n), overrides=over, rescan=1)
    second = ds.render(range(n), overrides=over, rescan=2)
    return (first - second) / math.sqrt(2.0)


def _texture(kernel: str, size: int) -> tuple[float, float]:
    field = _noise(kernel, size)
    std, grain = noise_texture(field, 0.7 * 64 / size)
    return float(std.median()), float(grain.median())


def test_the_grain_in_mm_does_not_depend_on_the_output_size() -> None:
    smooth = [_texture("smooth", s)[1] for s in (32, 64, 128)]
    # the smooth kernel's grain (~0.75 mm) is about a 32-pixel grid's pixel (1.4 mm)
    # or finer: it may only widen a little when averaged into such pixels
    assert max(smooth) / min(smooth) < 1.2, smooth
    sharp = [_texture("sharp", s)[1] for s in (64, 128)]
    assert max(sharp) / min(sharp) < 1.25, sharp
    standard = _texture("standard", 128)[1]
    assert smooth[2] > standard > sharp[1]  # smooth kernels give coarse grain


@pytest.mark.parametrize("kernel", ["smooth", "sharp"])
def test_coarser_pixels_are_averages_of_finer_ones(kernel: str) -> None:
    std64, _ = _texture(kernel, 64)
    std128, _ = _texture(kernel, 128)
    # the acquisition grid is 64 px: at 64 its std is noise_hu, and interpolating to a
    # finer grid adds no noise
    assert std64 == pytest.approx(NOISE_HU, rel=0.06)
    assert std128 == pytest.approx(NOISE_HU, rel=0.08)
    # a 32-pixel image is the 2 x 2 mean of a 64-pixel one: same std as binned 64 px noise
    binned = F.avg_pool2d(_noise(kernel, 64), 2)
    std32, _ = _texture(kernel, 32)
    assert std32 == pytest.approx(float(binned.std()), rel=0.1)
    assert std32 < 0.85 * std64


def test_volume_noise_has_the_grain_of_the_image_at_that_size() -> None:
    volume = _noise("smooth", 32, n=4, volume=True)
    std_v, grain_v = noise_texture(volume, 0.7 * 2)
    std_i, grain_i = _texture("smooth", 32)
    assert float(grain_v.median()) == pytest.approx(grain_i, rel=0.15)
    assert float(std_v.median()) == pytest.approx(std_i, rel=0.1)


def test_noise_texture_reads_planted_fields() -> None:
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4, 1, 64, 64, generator=g)
    std, grain = noise_texture(3.0 * white, 0.5)
    assert torch.allclose(std, torch.full_like(std, 3.0), rtol=0.05)
    # white noise: the correlation drops to ~0 at one pixel, so half-way is half a pixel
    assert torch.allclose(grain, torch.full_like(grain, 0.25), rtol=0.1)
    # a 4 x 4 moving average has a triangular autocorrelation: 1/2 at two pixels
    smooth = F.avg_pool2d(F.pad(white, (2, 1, 2, 1), mode="circular"), 4, stride=1)
    _, grain = noise_texture(smooth, 1.0)
    assert torch.allclose(grain, torch.full_like(grain, 2.0), rtol=0.1)
    mask = torch.zeros(4, 1, 64, 64, dtype=torch.bool)
    mask[..., 8:40, 8:40] = True
    std_in, _ = noise_texture(3.0 * white, 0.5, mask)
    assert torch.allclose(std_in, torch.full_like(std_in, 3.0), rtol=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": torch.zeros(2, 64, 64)}, "noise must be"),
        ({"pixel_mm": 0.0}, "pixel_mm must be"),
        ({"max_lag": 0}, "max_lag must be"),
        ({"region": torch.ones(1, 1, 8, 8, dtype=torch.bool)}, "region must be"),
    ],
)
def test_noise_texture_names_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"noise": torch.zeros(2, 1, 16, 16), "pixel_mm": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        noise_texture(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nps_peak_per_mm": 5.0, "psf_mm": 0.4}, ValueError, "nps_peak_per_mm"),
        ({"nps_peak_per_mm": 0.3, "psf_mm": 0.0}, ValueError, "psf_mm"),
        ({"nps_peak_per_mm": "0.3", "psf_mm": 0.4}, TypeError, "nps_peak_per_mm"),
    ],
)
def test_kernels_outside_the_physical_range_are_named(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Kernel(**kwargs)  # type: ignore[arg-type]


def test_unknown_kernels_and_noise_levels_are_named() -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        noise_power("lung", torch.linspace(0, 1, 5))
    ds = SyntheticNodules(SPEC, n=4, seed=0)
    with pytest.raises(ValueError, match=r"overrides\['noise_hu'\]"):
        ds.render([0], overrides={"noise_hu": 400.0})
    with pytest.raises(ValueError, match=r"overrides\['kernel'\]"):
        ds.render([0], overrides={"kernel": "lung"})
