"""intervention_sensitivity against a per-sample reference, on a contract-shaped dataset.

``DiscNodules`` implements the part of the SyntheticNodules contract the function uses
(``factors``, ``len``, batched ``render(indices, device, return_masks, overrides)`` with
the same exogenous noise), so these tests run without the real generator. The tests
with the real generator live in ``test_probing_planted.py``.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from torch import nn

from nodulebench.probing import RenderCache, SensitivityResult, intervention_sensitivity

SIZE = 24


class DiscNodules:
    """Bright disc of diameter ``diameter_mm`` (1 mm pixels) + a centre dot per code."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.factors = {
            "diameter_mm": 4.0 + 14.0 * torch.rand(n, generator=g),
            "calcification": torch.randint(0, 3, (n,), generator=g),
            "fixed_spacing": torch.full((n,), 0.7),
        }

    def __len__(self) -> int:
        return self.factors["diameter_mm"].shape[0]

    def noise(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        return 0.05 * torch.randn(1, SIZE, SIZE, generator=g)

    def render_one(self, index: int, diameter: float, code: int) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        radius = torch.sqrt((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2)
        image = (radius <= diameter / 2).float() + 0.3 * code * (radius <= 1.5).float()
        return image[None] + self.noise(index)

    def render(self, indices, device=None, return_masks=False, overrides=None):
        overrides = dict(overrides or {})
        rows = []
        for k, i in enumerate(torch.as_tensor(indices).tolist()):
            diameter = overrides.get("diameter_mm", self.factors["diameter_mm"])
            code = overrides.get("calcification", self.factors["calcification"])
            d = diameter[k] if "diameter_mm" in overrides else diameter[i]
            c = code[k] if "calcification" in overrides else code[i]
            rows.append(self.render_one(i, float(d), int(c)))
        return torch.stack(rows).to(device)


class DiscMean(nn.Module):
    """Malignant logit from the mean intensity over a fixed disc: a size-only model."""

    def __init__(self, two_logits: bool) -> None:
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        radius = torch.sqrt((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2)
        self.register_buffer("disc", ((radius <= 8) & (radius > 2)).float())
        self.embed = nn.Identity()
        self.two_logits = two_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fill = (x * self.disc).flatten(1).sum(1) / self.disc.sum()
        features = self.embed(torch.stack([fill, 2 * fill], dim=1))
        logit = 12.0 * (features[:, 0] - 0.45)
        return torch.stack([-logit / 2, logit / 2], dim=1) if self.two_logits else logit


def _reference(model, dataset, indices, name, values, embed):
    """Per-sample loop: render each counterfactual pair alone and compare."""
    flips, abs_changes, changes, distances = [], [], [], []
    for a, b in itertools.combinations(values, 2):
        for i in indices:
            outputs = []
            for value in (a, b):
                d = dataset.factors["diameter_mm"][i]
                c = dataset.factors["calcification"][i]
                if name == "diameter_mm":
                    d = value
                else:
                    c = value
                image = dataset.render_one(i, float(d), int(c))[None]
                with torch.no_grad():
                    out = model(image).double()
                    p = torch.softmax(out, 1)[0, 1] if out.ndim == 2 else torch.sigmoid(out[0])
                    e = embed(image)
                outputs.append((float(p), e))
            (pa, ea), (pb, eb) = outputs
            flips.append((pa > 0.5) != (pb > 0.5))
            abs_changes.append(abs(pb - pa))
            changes.append(pb - pa)
            distances.append(float(torch.linalg.vector_norm(eb - ea)))
    return np.mean(flips), np.mean(abs_changes), np.mean(changes), np.mean(distances)


@pytest.mark.parametrize("two_logits", [True, False])
def test_matches_per_sample_reference(two_logits: bool) -> None:
    dataset = DiscNodules(40)
    model = DiscMean(two_logits)
    results = intervention_sensitivity(
        model, dataset, n=12, seed=3, batch_size=5, embedding_layer="embed"
    )
    assert [r.factor for r in results] == ["diameter_mm", "calcification"]  # fixed skipped
    picked = np.sort(np.random.default_rng(3).choice(40, size=12, replace=False)).tolist()

    def embed(image: torch.Tensor) -> torch.Tensor:
        fill = (image * model.disc).sum() / model.disc.sum()
        return torch.stack([fill, 2 * fill]).double()

    size, calc = results
    low, high = np.percentile(dataset.factors["diameter_mm"].double().numpy(), [10, 90])
    assert size.values == pytest.approx((low, high)) and size.values_from == "percentiles"
    assert calc.values == (0.0, 1.0, 2.0) and calc.n_pairs == 3
    for record in results:
        expected = _reference(model, dataset, picked, record.factor, record.values, embed)
        got = (
            record.flip_rate,
            record.mean_abs_probability_change,
            record.mean_probability_change,
            record.embedding_displacement,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert record.n_samples == 12 and isinstance(record, SensitivityResult)
    # Size drives this model, the calcification dot sits inside the ignored centre.
    assert size.mean_abs_probability_change > 0.5 and size.flip_rate > 0.5
    assert calc.mean_abs_probability_change < 0.05 and calc.flip_rate == 0.0
    assert size.relative_embedding_displacement > 1.0


def test_user_values_and_named_fixed_factor() -> None:
    dataset = DiscNodules(20)
    [fixed] = intervention_sensitivity(
        DiscMean(True),
        dataset,
        factors=["diameter_mm"],
        values={"diameter_mm": [6.0, 10.0, 16.0]},
        n=8,
    )
    assert fixed.values == (6.0, 10.0, 16.0) and fixed.values_from == "user"
    assert fixed.n_pairs == 3 and fixed.embedding_displacement is None
    assert fixed.relative_embedding_displacement is None
    # Increasing the diameter fills the disc: the malignant probability goes up.
    assert fixed.mean_probability_change > 0


def test_deterministic_given_seed() -> None:
    dataset, model = DiscNodules(30), DiscMean(True)
    a = intervention_sensitivity(model, dataset, n=6, seed=1)
    assert a == intervention_sensitivity(model, dataset, n=6, seed=1)
    assert a != intervention_sensitivity(model, dataset, n=6, seed=2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"factors": ["size"]}, ValueError, "factors: unknown factor 'size'"),
        ({"factors": "diameter_mm"}, TypeError, "factors must be a sequence of names"),
        (
            {"factors": ["fixed_spacing"]},
            ValueError,
            "'fixed_spacing' does not vary in the dataset; pass values=",
        ),
        (
            {"values": {"diameter_mm": [3.0]}},
            ValueError,
            "values['diameter_mm'] must hold at least two distinct values",
        ),
        ({"values": {"size": [3.0, 4.0]}}, ValueError, "values names unknown factor 'size'"),
        ({"n": 0}, ValueError, "n must be an int >= 1; got 0"),
        ({"embedding_layer": "head"}, ValueError, "layers: 'head' is not a module"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, fragment) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        intervention_sensitivity(DiscMean(True), DiscNodules(10), **kwargs)


def test_empty_dataset_and_bad_model_output() -> None:
    with pytest.raises(ValueError, match="dataset must contain at least one sample"):
        intervention_sensitivity(DiscMean(True), DiscNodules(0))
    three = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 3))
    with pytest.raises(ValueError, match=re.escape("binary logits (N, 2)")):
        intervention_sensitivity(three, DiscNodules(10), n=4)


def test_category_names_become_codes_and_bad_values_raise() -> None:
    from nodulebench import NoduleSpec, SyntheticNodules

    data = SyntheticNodules(NoduleSpec(), n=8, seed=0, image_size=16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
    [named] = intervention_sensitivity(
        model, data, factors=["calcification"], n=4, values={"calcification": ["absent", "popcorn"]}
    )
    [coded] = intervention_sensitivity(
        model, data, factors=["calcification"], n=4, values={"calcification": [0, 3]}
    )
    assert named == coded and named.values == (0.0, 3.0)
    with pytest.raises(ValueError, match=re.escape("category names of calcification")):
        intervention_sensitivity(model, data, values={"calcification": ["absent", "big"]})
    with pytest.raises(TypeError, match=re.escape("values['diameter_mm'] must hold numbers")):
        intervention_sensitivity(model, data, values={"diameter_mm": [None, 3.0]})


class CountingNodules(DiscNodules):
    """DiscNodules that counts its render calls."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.calls = 0

    def render(self, indices, device=None, return_masks=False, overrides=None):
        self.calls += 1
        return super().render(indices, device, return_masks, overrides)


def test_render_cache_renders_each_batch_once_and_changes_no_result() -> None:
    dataset = CountingNodules(40)
    cached = RenderCache(dataset)
    models = [DiscMean(True), DiscMean(False)]
    plain = [intervention_sensitivity(m, dataset, n=12, seed=3, batch_size=5) for m in models]
    calls = dataset.calls
    dataset.calls = 0
    first = intervention_sensitivity(models[0], cached, n=12, seed=3, batch_size=5)
    assert dataset.calls == calls // 2 == cached.renders  # one model's worth of renders
    second = intervention_sensitivity(models[1], cached, n=12, seed=3, batch_size=5)
    assert dataset.calls == calls // 2  # the second model rendered nothing
    assert cached.hits == cached.renders
    assert [first, second] == plain


def test_render_cache_keys_on_indices_overrides_and_returns_copies() -> None:
    dataset = CountingNodules(10)
    cached = RenderCache(dataset)
    big = {"diameter_mm": torch.full((3,), 12.0)}
    batch = cached.render([0, 1, 2], overrides=big)
    batch += 100.0  # an in-place edit of the returned batch must not reach the cache
    torch.testing.assert_close(
        cached.render([0, 1, 2], overrides=big),
        dataset.render([0, 1, 2], overrides=big),
        rtol=0,
        atol=0,
    )
    assert cached.renders == 1
    cached.render([0, 1, 2], overrides={"diameter_mm": torch.full((3,), 13.0)})
    cached.render(torch.tensor([0, 1, 3]), overrides=big)
    cached.render([0, 1, 2])
    assert cached.renders == 4
    assert len(cached) == 10 and cached.factors is dataset.factors
    cached.clear()
    cached.render([0, 1, 2])
    assert cached.renders == 5


def test_render_cache_names_what_the_dataset_lacks() -> None:
    with pytest.raises(TypeError, match=re.escape("got list, which lacks factors, render")):
        RenderCache([1, 2, 3])  # type: ignore[arg-type]
