"""Rescans: the same object scanned again, with independent acquisition noise."""

from __future__ import annotations

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data.spec import Fixed


def _dataset(**kwargs: object) -> SyntheticNodules:
    spec = NoduleSpec(marginals={"noise_hu": Fixed(40.0), "blur_mm": Fixed(0.0)})
    return SyntheticNodules(spec, n=16, seed=3, output="hu", **kwargs)  # type: ignore[arg-type]


def test_rescan_zero_is_the_default_render() -> None:
    ds = _dataset()
    default = ds.render(range(8))
    assert torch.equal(ds.render(range(8), rescan=0), default)
    assert torch.allclose(ds[5][0], default[5], atol=1e-3)  # batch size: float rounding


def test_rescans_share_the_object_and_redraw_the_noise() -> None:
    ds = _dataset()
    idx = list(range(16))
    a, masks_a, factors_a = ds.render(idx, rescan=1, return_masks=True, return_factors=True)
    b, masks_b, factors_b = ds.render(idx, rescan=2, return_masks=True, return_factors=True)
    for name in masks_a:
        assert torch.equal(masks_a[name], masks_b[name])
    for name in factors_a:
        assert torch.equal(factors_a[name], factors_b[name])
    assert torch.equal(ds.render(idx, rescan=1), a)  # deterministic in (spec, seed, index, k)
    clean = ds.render(idx, overrides={"noise_hu": 0.0})
    noise = [ds.render(idx) - clean, a - clean, b - clean]
    variance = torch.stack([n.var() for n in noise])
    # independent draws of the same noise process: equal variance, and a difference of two
    # has twice it (correlated noise would give less)
    assert float((variance / variance.mean() - 1).abs().max()) < 0.05
    for first, second in ((0, 1), (1, 2), (0, 2)):
        ratio = float((noise[first] - noise[second]).var() / variance.mean())
        assert ratio == pytest.approx(2.0, abs=0.15)


def test_rescan_of_a_volume_keeps_the_anatomy() -> None:
    ds = _dataset(volume_size=16)
    a = ds.render([0, 1], rescan=1)
    b = ds.render([0, 1], rescan=1)
    assert torch.equal(a, b)
    clean = ds.render([0, 1], overrides={"noise_hu": 0.0})
    d0, d1 = ds.render([0, 1]) - clean, a - clean
    assert float((d0 - d1).var() / d0.var()) == pytest.approx(2.0, abs=0.2)
    assert torch.allclose(ds[1][0], ds.render([1], rescan=0)[0], atol=1e-3)


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.0, TypeError)])
def test_rescan_must_be_a_non_negative_int(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="rescan"):
        _dataset().render([0], rescan=value)  # type: ignore[arg-type]
