"""Null baselines of saliency and CKA: against definitions, planted truths, and errors."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from nodulebench import SyntheticNodules
from nodulebench.probing import baselines, linear_cka, mask_energy
from nodulebench.probing.baselines import (
    centered_gaussian_maps,
    cka_baselines,
    coarse_mask_maps,
    disjoint_pairs,
    permuted_masks,
    saliency_baselines,
)
from nodulebench.stats import holm


def test_docstring_examples() -> None:
    result = doctest.testmod(baselines, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def rendered() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, masks = SyntheticNodules(n=32, seed=2, image_size=32).render(
        list(range(32)), return_masks=True
    )
    return images, masks


def test_gaussian_against_the_formula() -> None:
    maps = centered_gaussian_maps(torch.zeros(2, 1, 6, 9, dtype=torch.float64), sigma=0.5)
    rows, cols = np.meshgrid(np.arange(6) - 2.5, np.arange(9) - 4.0, indexing="ij")
    expected = np.exp(-(rows**2 + cols**2) / (2 * 3.0**2))
    assert maps.shape == (2, 1, 6, 9) and maps.dtype == torch.float64
    np.testing.assert_allclose(maps[1, 0].numpy(), expected, rtol=1e-12)
    assert centered_gaussian_maps(torch.zeros(1, 1, 4, 4, 4)).shape == (1, 1, 4, 4, 4)


def test_coarse_mask_keeps_where_and_loses_detail() -> None:
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 8:24, 8:24] = True
    mask[1, :, 15, 0:8] = True  # a thin spicule: one row, invisible at 8 x 8
    maps = coarse_mask_maps(mask, grid=8)
    assert maps.shape == mask.shape and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert torch.all(maps[:, :, 12:20, 12:20] == 1.0)  # deep inside: every cell full
    assert torch.all(maps[0, :, :4, :] == 0.0)  # a cell away: empty
    # The spicule fills a quarter of a 4 x 4 cell: seen at a quarter of its strength at most.
    assert bool(mask[1, 0, 15, 2]) and 0 < float(maps[1, 0, 15, 2]) <= 0.25
    assert coarse_mask_maps(torch.ones(1, 1, 8, 8, 8, dtype=torch.bool), grid=2).shape[2:] == (
        8,
        8,
        8,
    )


def test_permuted_masks_are_a_seeded_derangement(
    rendered: tuple[torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    _, masks = rendered
    permuted, source = permuted_masks(masks, seed=3)
    assert sorted(source.tolist()) == list(range(32))
    assert bool((source != torch.arange(32)).all())
    for region in masks:
        assert torch.equal(permuted[region], masks[region][source])
    assert torch.equal(permuted_masks(masks, seed=3)[1], source)
    assert not torch.equal(permuted_masks(masks, seed=4)[1], source)
    two = permuted_masks({"a": torch.tensor([[True], [False]])})[1]
    assert two.tolist() == [1, 0]


def test_observed_is_the_ratio_of_mean_shares(
    rendered: tuple[torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    images, masks = rendered
    maps = images.clamp_min(0) + 0.01
    energy = mask_energy(maps, masks)
    area = mask_energy(torch.ones_like(maps), masks)
    rows = saliency_baselines(maps, masks)
    for row in rows:
        expected = float(energy[row.region].mean()) / float(area[row.region].mean())
        assert row.observed == pytest.approx(expected, rel=1e-9)
        assert row.excess.difference == pytest.approx(row.observed - row.null, abs=1e-9)
    assert {r.baseline for r in rows} == {"gaussian", "coarse_mask", "permuted"}


def test_image_agnostic_maps_score_above_one_and_show_no_excess(
    rendered: tuple[torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    _, masks = rendered
    gaussian = centered_gaussian_maps(masks["nodule"].float())
    rows = {(r.region, r.baseline): r for r in saliency_baselines(gaussian, masks)}
    spicules = rows["spicules", "gaussian"]
    # A map that never looks at the image draws well over its area's share of the spicules:
    # 1 is not "no preference".
    assert spicules.observed > 1.5
    assert spicules.excess.difference == 0.0 and spicules.excess.p_value == 1.0
    # Against other images' masks it does exactly as well on average (a permutation keeps
    # the set of masks), so it has no excess there either.
    permuted = rows["spicules", "permuted"]
    assert permuted.excess.difference == pytest.approx(0.0, abs=1e-9)
    assert rows["spicules", "coarse_mask"].null > 1.5


def test_maps_that_follow_the_spicules_beat_every_null(
    rendered: tuple[torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    _, masks = rendered
    has_spicules = masks["spicules"].flatten(1).any(dim=1)
    assert int(has_spicules.sum()) >= 8
    chosen = {k: v[has_spicules] for k, v in masks.items()}
    maps = chosen["spicules"].float() + 1e-3
    rows = [r for r in saliency_baselines(maps, chosen) if r.region == "spicules"]
    assert len(rows) == 3
    for row in rows:
        assert row.excess.difference > 1.0 and row.excess.low > 0 and row.excess.p_value < 1e-3


def test_disjoint_pairs() -> None:
    runs = [torch.zeros(1) for _ in range(5)]
    pairs = disjoint_pairs(runs)
    assert len(pairs) == 2 and pairs[0][0] is runs[0] and pairs[1][1] is runs[3]
    assert disjoint_pairs([1, 2], [3, 4]) == [(1, 3), (2, 4)]
    with pytest.raises(ValueError, match="appears twice"):
        disjoint_pairs([runs[0], runs[1]], [runs[0], runs[2]])
    with pytest.raises(ValueError, match="appears twice"):
        disjoint_pairs(["s0", "s1", "s0"])
    with pytest.raises(ValueError, match="at least 2 runs"):
        disjoint_pairs(["s0"])
    with pytest.raises(ValueError, match="as many runs"):
        disjoint_pairs(["a0", "a1"], ["b0"])
    with pytest.raises(TypeError, match="first must be a sequence"):
        disjoint_pairs("ab")


def _features(
    pixels: torch.Tensor, weights: torch.Tensor, g: torch.Generator, noise: float
) -> torch.Tensor:
    return torch.relu(pixels @ (weights + noise * torch.randn(weights.shape, generator=g)))


def test_cka_baselines_against_direct_values_and_holm() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(80, 16, generator=g)
    learned = torch.randn(16, 6, generator=g)
    pairs = {
        # Two trained networks share the learned weights: far above an untrained network.
        "trained": [
            (_features(pixels, learned, g, 0.2), _features(pixels, learned, g, 0.2))
            for _ in range(5)
        ],
        # "Trained" networks that are as random as the untrained one: the planted null.
        "as_random": [
            (_features(pixels, 0 * learned, g, 1.0), _features(pixels, 0 * learned, g, 1.0))
            for _ in range(5)
        ],
    }
    randoms = {cell: [_features(pixels, 0 * learned, g, 1.0) for _ in range(5)] for cell in pairs}
    rows = cka_baselines(pairs, randoms, pixels)
    assert [(r.cell, r.baseline) for r in rows] == [
        ("trained", "random_init"),
        ("trained", "pixels"),
        ("as_random", "random_init"),
        ("as_random", "pixels"),
    ]
    for row in rows:
        observed = [linear_cka(x, y) for x, y in pairs[row.cell]]
        if row.baseline == "random_init":
            null = [
                linear_cka(x, r)
                for (x, _), r in zip(pairs[row.cell], randoms[row.cell], strict=True)
            ]
        else:
            null = [linear_cka(x, pixels) for x, _ in pairs[row.cell]]
        assert row.observed.mean == pytest.approx(float(np.mean(observed)))
        assert row.null.mean == pytest.approx(float(np.mean(null)))
        assert row.excess.difference == pytest.approx(float(np.mean(observed) - np.mean(null)))
    assert [r.adjusted_p for r in rows] == pytest.approx(holm([r.excess.p_value for r in rows]))
    by = {(r.cell, r.baseline): r for r in rows}
    assert by["trained", "random_init"].rejected and by["trained", "random_init"].excess.low > 0
    assert not by["as_random", "random_init"].rejected
    assert math.isfinite(by["as_random", "pixels"].excess.p_value)


def test_cka_baselines_refuse_reused_references() -> None:
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(20, 4, generator=g)
    others = [torch.randn(20, 4, generator=g) for _ in range(3)]
    reused = {"layer": [(other, reference) for other in others]}
    with pytest.raises(ValueError, match="must not reuse a tensor"):
        cka_baselines(reused, pixels=torch.randn(20, 5, generator=g))
    fine = {"layer": [(others[0], others[1]), (others[2], reference)]}
    with pytest.raises(ValueError, match="one untrained network per pair"):
        cka_baselines(fine, {"layer": [torch.randn(20, 4, generator=g)]})
    with pytest.raises(ValueError, match="needs a baseline"):
        cka_baselines(fine)
    with pytest.raises(ValueError, match="at least 2 independent pairs"):
        cka_baselines({"layer": fine["layer"][:1]}, pixels=torch.randn(20, 5, generator=g))
    with pytest.raises(ValueError, match="random_init must have the cells"):
        cka_baselines(fine, {"other": []})


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: centered_gaussian_maps(torch.zeros(1, 2, 4, 4)), ValueError, "one channel"),
        (lambda: centered_gaussian_maps(torch.zeros(1, 1, 4, 4), sigma=0), ValueError, "sigma"),
        (lambda: coarse_mask_maps(torch.zeros(1, 1, 4, 4)), TypeError, "bool"),
        (
            lambda: coarse_mask_maps(torch.zeros(1, 1, 4, 4, dtype=torch.bool), grid=5),
            ValueError,
            "grid",
        ),
        (
            lambda: permuted_masks({"a": torch.zeros(1, 1, 2, 2, dtype=torch.bool)}),
            ValueError,
            "at least 2 images",
        ),
        (
            lambda: permuted_masks(
                {"a": torch.zeros(2, 1, 2, 2, dtype=torch.bool), "b": torch.zeros(3, 1, 2, 2)}
            ),
            ValueError,
            "same number of images",
        ),
        (
            lambda: saliency_baselines(
                torch.ones(1, 1, 4, 4), {"nodule": torch.ones(1, 1, 4, 4, dtype=torch.bool)}
            ),
            ValueError,
            "at least 2 images",
        ),
        (
            lambda: saliency_baselines(
                torch.ones(2, 1, 4, 4), {"core": torch.ones(2, 1, 4, 4, dtype=torch.bool)}
            ),
            ValueError,
            "coarse_region must be one of",
        ),
    ],
)
def test_bad_input_is_named(call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call()
