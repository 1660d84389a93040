"""The renderer: calibration of noise and background, masks per pattern, devices."""

from __future__ import annotations

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import FACTORS, Fixed
from nodulebench.data.render import render_hu, window
from nodulebench.data.sampling import sample_factors

QUIET = {
    "background_texture_hu": Fixed(0.0),
    "vessels": Fixed("none"),
    "blur_mm": Fixed(0.0),
    "noise_hu": Fixed(0.0),
    "location": Fixed("isolated"),
    "fissure": Fixed("absent"),
}


def test_noise_std_is_noise_hu() -> None:
    ds = SyntheticNodules(NoduleSpec(marginals=QUIET), n=16, seed=0, output="hu")
    idx = list(range(16))
    clean = ds.render(idx)
    noisy = ds.render(idx, overrides={"noise_hu": 40.0})
    std = (noisy - clean).flatten(1).std(1)
    assert abs(float(std.mean()) - 40.0) < 1.5
    # noise is zero-mean and grainy: neighbouring pixels correlate, distant ones do not
    d = (noisy - clean)[:, 0]
    near = torch.corrcoef(torch.stack([d[:, :, :-1].flatten(), d[:, :, 1:].flatten()]))[0, 1]
    far = torch.corrcoef(torch.stack([d[:, :, :-8].flatten(), d[:, :, 8:].flatten()]))[0, 1]
    assert float(near) > 0.1 and abs(float(far)) < 0.1


def test_background_level_and_texture() -> None:
    ds = SyntheticNodules(
        NoduleSpec(marginals={**QUIET, "diameter_mm": Fixed(4.0)}), n=8, seed=1, output="hu"
    )
    hu, masks = ds.render(range(8), return_masks=True)
    far = ~torch.nn.functional.max_pool2d(masks["nodule"].float(), 15, 1, 7).bool()
    for k in range(8):
        level = ds.factors["background_hu"][k] + ds.factors["hu_offset"][k]  # calibration
        assert abs(float(hu[k][far[k]].mean()) - float(level)) < 2.0
    textured = ds.render(range(8), overrides={"background_texture_hu": 30.0})
    spread = (textured - hu)[far].std()
    assert 15.0 < float(spread) < 45.0


def test_blur_softens_edges() -> None:
    ds = SyntheticNodules(
        NoduleSpec(marginals={**QUIET, "margin_sharpness": Fixed(1.0)}), n=2, seed=0
    )
    sharp = ds.render([0])
    soft = ds.render([0], overrides={"blur_mm": 1.5})
    grad = lambda x: (x[..., 1:] - x[..., :-1]).abs().max()  # noqa: E731
    assert float(grad(soft)) < 0.6 * float(grad(sharp))


def test_spicule_area_grows_with_spiculation() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=4, seed=2)
    areas = []
    for s in (0.0, 0.3, 0.7, 1.0):
        _, masks = ds.render(range(4), return_masks=True, overrides={"spiculation": s})
        areas.append(masks["spicules"].flatten(1).sum(1).float())
    assert float(areas[0].max()) == 0.0
    for lo, hi in zip(areas, areas[1:], strict=False):
        assert bool((hi > lo).all())


@pytest.mark.parametrize("pattern", FACTORS["calcification"].categories)
def test_calcification_masks_per_pattern(pattern: str) -> None:
    ds = SyntheticNodules(
        NoduleSpec(marginals={"texture": Fixed("solid")}), n=3, seed=4, output="hu"
    )
    hu, masks = ds.render(
        range(3), return_masks=True, overrides={"calcification": pattern, "diameter_mm": 15.0}
    )
    calc = masks["calcification"]
    if pattern == "absent":
        assert not bool(calc.any())
    else:
        assert bool(calc.flatten(1).any(1).all())
        assert float(hu[calc].median()) > 250.0  # calcium is far denser than soft tissue


def test_chunking_does_not_change_the_result() -> None:
    factors, _ = sample_factors(NoduleSpec(), 40, 0)
    idx = torch.arange(40)
    a, ma = render_hu(factors, 0, idx, 32, with_masks=True, chunk_size=7)
    b, mb = render_hu(factors, 0, idx, 32, with_masks=True, chunk_size=40)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    assert ma is not None and mb is not None
    for k in ma:
        assert torch.equal(ma[k], mb[k])


def test_window() -> None:
    hu = torch.tensor([-2000.0, -1000.0, -300.0, 400.0, 900.0])
    torch.testing.assert_close(window(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


@pytest.mark.gpu
def test_cpu_and_cuda_agree() -> None:
    ds = SyntheticNodules(NoduleSpec().with_shortcut("calcification", 0.5), n=64, seed=0)
    idx = list(range(64))
    cpu, cpu_masks = ds.render(idx, return_masks=True)
    gpu, gpu_masks = ds.render(idx, device="cuda", return_masks=True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)
    for k in cpu_masks:
        # a pixel centre exactly on an outline may fall either way
        assert int((gpu_masks[k].cpu() != cpu_masks[k]).sum()) <= 64


def test_images_are_continuous_in_the_factors() -> None:
    # no nearest-bin lookups or hard thresholds: float32-sized differences between devices
    # (atan2, sqrt) cannot flip a pixel, which is what lets CPU and CUDA agree to 1e-3
    ds = SyntheticNodules(NoduleSpec(marginals={"margin_sharpness": Fixed(1.0)}), n=32, seed=8)
    idx = list(range(32))
    base = ds.render(idx)
    nudged = ds.render(
        idx,
        overrides={
            "offset_x_mm": ds.factors["offset_x_mm"] + 1e-5,
            "orientation_deg": ds.factors["orientation_deg"] + 1e-5,
        },
    )
    assert float((nudged - base).abs().max()) < 1e-3


def test_batch_size_and_thread_count_stay_within_the_documented_bound() -> None:
    # masks and every random number are exact; pixel values may differ by summation order
    ds = SyntheticNodules(NoduleSpec(), n=24, seed=5, image_size=32, output="hu")
    together, masks = ds.render(range(24), return_masks=True)
    for i in (0, 7, 23):
        alone, alone_masks = ds.render([i], return_masks=True)
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-3)
        for k in masks:
            assert torch.equal(alone_masks[k][0], masks[k][i])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = ds.render(range(24))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two, together, rtol=0, atol=1e-3)


@pytest.mark.parametrize("size", [{"image_size": 32}, {"volume_size": 16}])
def test_a_callers_autocast_does_not_change_the_samples(size: dict[str, int]) -> None:
    # A model read in bfloat16 around an intervention must see the float32 samples.
    ds = SyntheticNodules(NoduleSpec(), n=4, seed=3, **size)
    plain, masks = ds.render(range(4), return_masks=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast, cast_masks = ds.render(range(4), return_masks=True, overrides={"diameter_mm": 12.0})
        again = ds.render(range(4))
    assert again.dtype == torch.float32
    assert torch.equal(again, plain)
    assert torch.equal(cast, ds.render(range(4), overrides={"diameter_mm": 12.0}))
    assert masks.keys() == cast_masks.keys()
