"""SyntheticNodules: the dataset contract, determinism, interventions, golden values."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.utils.data import DataLoader

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import FACTORS

SPEC = NoduleSpec().with_shortcut("diameter_mm", 0.8)


@pytest.fixture(scope="module")
def ds() -> SyntheticNodules:
    return SyntheticNodules(SPEC, n=24, seed=3, image_size=32)


def test_contract_length_types_shapes_repr(ds: SyntheticNodules) -> None:
    assert len(ds) == 24
    image, label = ds[5]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert label.shape == () and label.dtype == torch.int64 and int(label) in (0, 1)
    assert ds[-1][1] == ds.labels[23]
    assert set(ds.factors) == set(FACTORS)
    assert all(v.shape == (24,) for v in ds.factors.values())
    assert ds.labels.shape == (24,) and ds.labels.dtype == torch.int64
    text = repr(ds)
    assert "n=24" in text and "seed=3" in text and "diameter_mm > 12.5" in text


def test_return_factors_and_hu_output() -> None:
    ds = SyntheticNodules(SPEC, n=4, seed=0, image_size=32, return_factors=True, output="hu")
    image, label, factors = ds[2]
    assert set(factors) == set(FACTORS)
    assert factors["texture"].dtype == torch.int64 and factors["texture"].shape == ()
    assert float(factors["diameter_mm"]) == float(ds.factors["diameter_mm"][2])
    assert float(image.min()) < -500  # lung parenchyma, in HU
    windowed = SyntheticNodules(SPEC, n=4, seed=0, image_size=32)[2][0]
    torch.testing.assert_close(windowed, ((image + 1000) / 1400).clamp(0, 1))
    del label


def test_transforms_are_called() -> None:
    calls: list[str] = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        calls.append("image")
        return x * 2

    def target_transform(y: torch.Tensor) -> int:
        calls.append("label")
        return int(y) + 10

    ds = SyntheticNodules(
        SPEC, n=3, image_size=16, transform=transform, target_transform=target_transform
    )
    plain = SyntheticNodules(SPEC, n=3, image_size=16)
    image, target = ds[1]
    assert calls == ["image", "label"]
    torch.testing.assert_close(image, plain[1][0] * 2)
    assert target == int(plain.labels[1]) + 10


def test_item_equals_batch_render_and_any_order(ds: SyntheticNodules) -> None:
    batch = ds.render(list(range(24)))
    order = [7, 2, 19, 2, 0]
    for i in order:
        torch.testing.assert_close(ds[i][0], batch[i], rtol=0, atol=1e-5)
    torch.testing.assert_close(ds.render(order), batch[order], rtol=0, atol=1e-5)
    again = SyntheticNodules(SPEC, n=24, seed=3, image_size=32)
    assert torch.equal(again.render(list(range(24))), batch)
    other_seed = SyntheticNodules(SPEC, n=24, seed=4, image_size=32)
    assert not torch.allclose(other_seed.render([0]), batch[:1])


def test_identical_across_dataloader_workers() -> None:
    ds = SyntheticNodules(SPEC, n=8, seed=1, image_size=16)
    single = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=0)])
    multi = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(single, multi)


def test_dataloader_batches_render_at_once_and_match_items() -> None:
    ds = SyntheticNodules(SPEC, n=10, seed=1, image_size=16, return_factors=True)
    calls: list[int] = []
    render = ds.render

    def counting_render(indices, *args, **kwargs):
        calls.append(len(indices))
        return render(indices, *args, **kwargs)

    ds.render = counting_render  # type: ignore[method-assign]
    images, labels, factors = next(iter(DataLoader(ds, batch_size=5, shuffle=False)))
    assert calls == [5]
    assert images.shape == (5, 1, 16, 16) and labels.shape == (5,)
    assert factors["texture"].shape == (5,)
    for j in range(5):
        torch.testing.assert_close(images[j], ds[j][0], rtol=0, atol=1e-5)
        assert labels[j] == ds.labels[j]


def test_global_rng_is_never_touched() -> None:
    state = torch.get_rng_state()
    ds = SyntheticNodules(SPEC, n=10, seed=0, image_size=16)
    ds.render([0, 1], return_masks=True)
    ds.intervene(0, spiculation=1.0)
    assert torch.equal(state, torch.get_rng_state())


def test_masks_contract(ds: SyntheticNodules) -> None:
    images, masks = ds.render([0, 1, 2, 3], return_masks=True)
    assert images.shape == (4, 1, 32, 32)
    assert set(masks) == {"nodule", "body", "spicules", "calcification", "vessels", "pleura"}
    for m in masks.values():
        assert m.shape == (4, 1, 32, 32) and m.dtype == torch.bool
    assert bool((masks["spicules"] <= masks["nodule"]).all())
    assert torch.equal(masks["body"] | masks["spicules"], masks["nodule"])
    assert not bool((masks["body"] & masks["spicules"]).any())
    assert bool((masks["calcification"] <= masks["nodule"]).all())
    assert bool(masks["nodule"].flatten(1).any(1).all())


def test_intervene_changes_only_what_is_named() -> None:
    ds = SyntheticNodules(SPEC, n=6, seed=2, image_size=64)
    i = int(torch.nonzero(ds.labels == 0)[0])
    base, base_masks = ds.render([i], return_masks=True)
    same = ds.intervene(i, spiculation=float(ds.factors["spiculation"][i]))
    torch.testing.assert_close(same, base[0], rtol=0, atol=1e-6)
    spiky, spiky_masks = ds.render([i], return_masks=True, overrides={"spiculation": 1.0})
    assert int(spiky_masks["spicules"].sum()) > int(base_masks["spicules"].sum())
    # the body and the exogenous noise are the same: far from the nodule nothing moves
    outside = ~torch.nn.functional.max_pool2d(spiky_masks["nodule"].float(), 9, 1, 4).bool()
    torch.testing.assert_close(spiky[outside], base[outside], rtol=0, atol=0.02)
    assert torch.equal(
        spiky_masks["nodule"] & ~spiky_masks["spicules"],
        base_masks["nodule"] & ~base_masks["spicules"],
    )


def test_intervening_on_texture_redraws_attenuation_in_its_range() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=4, seed=0, image_size=32, output="hu")
    solid = ds.render([0, 1, 2, 3], overrides={"texture": "solid"}, return_masks=True)
    glass = ds.render([0, 1, 2, 3], overrides={"texture": "ground-glass"}, return_masks=True)
    body = solid[1]["nodule"] & ~solid[1]["spicules"] & ~solid[1]["calcification"]
    for k in range(4):
        assert float(solid[0][k][body[k]].median()) > float(glass[0][k][body[k]].median()) + 300


def test_traverse(ds: SyntheticNodules) -> None:
    values = [4.0, 10.0, 25.0]
    row = ds.traverse(1, "diameter_mm", values)
    assert row.shape == (3, 1, 32, 32)
    for k, v in enumerate(values):
        torch.testing.assert_close(row[k], ds.intervene(1, diameter_mm=v), rtol=0, atol=1e-6)
    cats = ds.traverse(1, "calcification", ["absent", "central", "popcorn"])
    assert cats.shape == (3, 1, 32, 32) and not torch.equal(cats[0], cats[1])
    assert ds.traverse(0, "lobulation", torch.linspace(0, 1, 5)).shape == (5, 1, 32, 32)


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (lambda ds: ds[24], IndexError, "index must lie in [-24, 24); got 24"),
        (lambda ds: ds[-25], IndexError, "got -25"),
        (lambda ds: ds["a"], TypeError, "index must be an int; got str"),
        (lambda ds: ds.render([0, 30]), IndexError, "got 30"),
        (lambda ds: ds.render(torch.tensor([0.5])), TypeError, "1-D integer tensor"),
        (lambda ds: ds.intervene(0, size=3.0), ValueError, "overrides must be one of"),
        (
            lambda ds: ds.intervene(0, diameter_mm=50.0),
            ValueError,
            "overrides['diameter_mm'] must lie in [3.0, 30.0] mm; got 50.0",
        ),
        (lambda ds: ds.intervene(0, diameter_mm=float("nan")), ValueError, "got nan"),
        (lambda ds: ds.intervene(0, texture="fluffy"), ValueError, "got 'fluffy'"),
        (lambda ds: ds.intervene(0, texture=5), ValueError, "category codes in [0, 2]"),
        (
            lambda ds: ds.render([0, 1], overrides={"sphericity": torch.ones(3)}),
            ValueError,
            "must be a number or a (2,) tensor",
        ),
        (lambda ds: ds.traverse(0, "colour", [1.0]), ValueError, "got 'colour'"),
    ],
)
def test_bad_access_raises(ds: SyntheticNodules, call, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        call(ds)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"n": 0}, ValueError, "n must be an int in [1, 2147483647]; got 0"),
        ({"n": 2.5}, TypeError, "n must be an int; got float"),
        ({"image_size": 8}, ValueError, "image_size must be an int in [16, 1024]; got 8"),
        ({"seed": -1}, ValueError, "seed must be an int"),
        ({"output": "png"}, ValueError, "output must be one of 'window', 'hu'; got 'png'"),
        ({"spec": "default"}, TypeError, "spec must be a NoduleSpec; got str"),
    ],
)
def test_bad_construction_raises(kwargs, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        SyntheticNodules(**{"n": 4, **kwargs})
    assert fragment in str(info.value)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_golden_factor_table_and_labels() -> None:
    ds = SyntheticNodules(SPEC.with_shortcut("calcification", 0.5), n=64, seed=2024, image_size=32)
    # the factors pinned before slice_thickness_mm and hu_offset existed: adding a factor
    # changes none (re-pinned when scanners C and D took their published noise ranges)
    later = ("slice_thickness_mm", "hu_offset")
    table = torch.stack([ds.factors[name].double() for name in FACTORS if name not in later])
    assert _digest(table) == GOLDEN_TABLE
    assert _digest(ds.labels) == GOLDEN_LABELS


def test_golden_images() -> None:
    # FFT libraries differ in the last bits between builds: pin values, not bytes
    ds = SyntheticNodules(SPEC, n=64, seed=2024, image_size=32, output="hu")
    hu = ds.render([0, 17, 63])
    torch.testing.assert_close(hu.mean((1, 2, 3)), torch.tensor(GOLDEN_MEANS), rtol=0, atol=0.05)
    torch.testing.assert_close(hu[:, 0, 16, 16], torch.tensor(GOLDEN_CENTRES), rtol=0, atol=0.05)


GOLDEN_TABLE = "69e15082a94d19f0"
GOLDEN_LABELS = "96e16c8d9af5e73a"
GOLDEN_MEANS = [-748.21, -824.668, -793.569]
GOLDEN_CENTRES = [-393.621, -364.788, 37.619]


def test_materialize_and_reload(tmp_path) -> None:
    ds = SyntheticNodules(SPEC, n=10, seed=6, image_size=16)
    ds.materialize(tmp_path / "c", batch_size=4)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "factors.npy",
        "images.npy",
        "labels.npy",
        "manifest.json",
    ]
    cached = SyntheticNodules(SPEC, n=10, seed=6, image_size=16, cache=tmp_path / "c")
    torch.testing.assert_close(cached.render(range(10)), ds.render(range(10)), rtol=0, atol=1e-5)
    torch.testing.assert_close(cached[3][0], ds[3][0], rtol=0, atol=1e-5)
    # interventions and masks still render
    assert cached.intervene(0, spiculation=1.0).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="seed must be 7; got 6"):
        SyntheticNodules(SPEC, n=10, seed=7, image_size=16, cache=tmp_path / "c")
    with pytest.raises(ValueError, match="spec_sha256 must be"):
        SyntheticNodules(SPEC.reversed(), n=10, seed=6, image_size=16, cache=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        SyntheticNodules(SPEC, n=10, seed=6, image_size=16, cache=tmp_path / "missing")
    # a cache holds plain .npy arrays: no pickle needed to read them
    import numpy as np

    assert np.load(tmp_path / "c" / "labels.npy", allow_pickle=False).shape == (10,)


def test_render_and_intervene_return_the_factors_used() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=8, seed=4, image_size=32)
    images, used = ds.render([1, 5], return_factors=True)
    for name, v in ds.factors.items():
        assert torch.equal(used[name], v[[1, 5]])
    # overriding texture re-derives attenuation from its own exogenous noise: reported
    _, masks, used = ds.render(
        [1, 5], return_masks=True, return_factors=True, overrides={"texture": "ground-glass"}
    )
    assert set(masks) >= {"nodule", "vessels"}
    assert used["texture"].tolist() == [2, 2]
    assert bool(((used["attenuation_hu"] >= -750) & (used["attenuation_hu"] <= -450)).all())
    image, one = ds.intervene(5, site="scanner_c", return_factors=True)
    assert image.shape == (1, 32, 32) and int(one["site"]) == 2
    assert 28.0 <= float(one["noise_hu"]) <= 45.0 and 0.74 <= float(one["pixel_spacing_mm"])
    torch.testing.assert_close(image, ds.intervene(5, site="scanner_c"), rtol=0, atol=0)


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        NoduleSpec(label_noise=0.1).with_shortcut("calcification", 0.6).with_shortcut("site", -0.4),
        NoduleSpec(malignant_fraction=None),
    ],
)
def test_rows_per_index_equal_the_whole_table(spec: NoduleSpec) -> None:
    from nodulebench.data.sampling import factor_rows, sample_factors

    factors, labels = sample_factors(spec, 301, 8)
    idx = torch.tensor([300, 0, 17, 17, 150])
    rows, row_labels = factor_rows(spec, 301, 8, idx)
    assert torch.equal(row_labels, labels[idx])
    for name in FACTORS:
        assert torch.equal(rows[name], factors[name][idx]), name


def test_ten_million_samples_without_a_table() -> None:
    import pickle

    ds = SyntheticNodules(
        SPEC.replace(label_noise=0.05), n=10_000_000, seed=1, image_size=16, return_factors=True
    )
    image, label, factors = ds[9_999_999]
    assert image.shape == (1, 16, 16) and label.dtype == torch.int64
    assert ds._full is None  # rendering and items never built the table
    # what a spawned DataLoader worker receives: a few kilobytes, not the table
    blob = pickle.dumps(ds)
    assert len(blob) < 8_000
    again = pickle.loads(blob)
    assert again._full is None and torch.equal(again[123][0], ds[123][0])
    # the rows of a small dataset are those of its whole table
    small = SyntheticNodules(SPEC, n=1000, seed=1, image_size=16, return_factors=True)
    _, label_k, factors_k = small[999]
    assert int(label_k) == int(small.labels[999])
    assert float(factors_k["diameter_mm"]) == float(small.factors["diameter_mm"][999])
