"""Hypothesis properties of the pairwise losses: invariances and finiteness at extremes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench.losses import functional as LF

LossFn = Callable[..., torch.Tensor]

# Every pairwise loss in a configuration where normalize=True (scale invariance holds).
PAIRWISE: dict[str, tuple[LossFn, dict[str, object]]] = {
    "supcon-out": (LF.supcon_loss, {}),
    "supcon-in": (LF.supcon_loss, {"variant": "in"}),
    "contrastive": (LF.contrastive_loss, {"normalize": True}),
    "triplet-hard": (LF.triplet_margin_loss, {}),
    "triplet-all": (LF.triplet_margin_loss, {"mining": "all"}),
    "triplet-semihard": (LF.triplet_margin_loss, {"mining": "semihard"}),
    "triplet-all-cosine": (LF.triplet_margin_loss, {"mining": "all", "distance": "cosine"}),
    "multi-similarity": (LF.multi_similarity_loss, {}),
}

PROPERTY_SETTINGS = settings(max_examples=20, deadline=None)


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A float64 batch (B, D) or (B, V, D), its labels, and a seed for derived draws."""
    seed = draw(st.integers(0, 2**31 - 1))
    batch = draw(st.integers(2, 7))
    views = draw(st.sampled_from([None, 2, 3]))
    dim = draw(st.integers(2, 5))
    classes = draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, dim) if views is None else (batch, views, dim)
    embeddings = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return embeddings, labels, seed


def permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@PROPERTY_SETTINGS
@given(data=batches())
def test_batch_permutation_invariance(
    name: str, data: tuple[torch.Tensor, torch.Tensor, int]
) -> None:
    fn, kwargs = PAIRWISE[name]
    embeddings, labels, seed = data
    perm = permutation(embeddings.shape[0], seed)
    torch.testing.assert_close(
        fn(embeddings[perm], labels[perm], **kwargs), fn(embeddings, labels, **kwargs)
    )
    per_anchor = fn(embeddings, labels, reduction="none", **kwargs)
    torch.testing.assert_close(
        fn(embeddings[perm], labels[perm], reduction="none", **kwargs), per_anchor[perm]
    )


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@PROPERTY_SETTINGS
@given(data=batches(), offset=st.integers(-5, 100))
def test_label_renaming_invariance(
    name: str, data: tuple[torch.Tensor, torch.Tensor, int], offset: int
) -> None:
    fn, kwargs = PAIRWISE[name]
    embeddings, labels, seed = data
    # An injective renaming: permute the label values, then shift them.
    renamed = permutation(int(labels.max()) + 1, seed)[labels] * 7 + offset
    torch.testing.assert_close(
        fn(embeddings, renamed, reduction="none", **kwargs),
        fn(embeddings, labels, reduction="none", **kwargs),
    )


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@PROPERTY_SETTINGS
@given(data=batches(), log_scale=st.floats(-3.0, 3.0))
def test_scale_invariance_when_normalized(
    name: str, data: tuple[torch.Tensor, torch.Tensor, int], log_scale: float
) -> None:
    fn, kwargs = PAIRWISE[name]
    embeddings, labels, _ = data
    scaled = embeddings * 10.0**log_scale
    torch.testing.assert_close(
        fn(scaled, labels, reduction="none", **kwargs),
        fn(embeddings, labels, reduction="none", **kwargs),
    )


def assert_finite_loss_and_grad(
    fn: LossFn, embeddings: torch.Tensor, labels: torch.Tensor, **kwargs: object
) -> None:
    leaf = embeddings.detach().clone().requires_grad_(True)
    loss = fn(leaf, labels, **kwargs)
    loss.backward()
    assert torch.isfinite(loss).all()
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("variant", ["out", "in"])
@PROPERTY_SETTINGS
@given(
    data=batches(),
    log_temperature=st.floats(-3.0, 3.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_supcon_finite_at_extreme_temperatures(
    variant: str,
    data: tuple[torch.Tensor, torch.Tensor, int],
    log_temperature: float,
    dtype: torch.dtype,
) -> None:
    embeddings, labels, _ = data
    temperature = 10.0**log_temperature
    assert_finite_loss_and_grad(
        LF.supcon_loss, embeddings.to(dtype), labels, temperature=temperature, variant=variant
    )
    assert_finite_loss_and_grad(
        LF.supcon_loss, embeddings.to(dtype), None, temperature=temperature, variant=variant
    )


@pytest.mark.parametrize("temperature", [1e-3, 1e3])
def test_supcon_extreme_temperatures_exact_endpoints(temperature: float) -> None:
    embeddings = torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    for variant in ("out", "in"):
        assert_finite_loss_and_grad(
            LF.supcon_loss, embeddings, labels, temperature=temperature, variant=variant
        )
        assert_finite_loss_and_grad(LF.ntxent_loss, embeddings, None, temperature=temperature)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@PROPERTY_SETTINGS
@given(data=batches(), normalize=st.booleans())
def test_finite_when_embeddings_coincide(
    name: str, data: tuple[torch.Tensor, torch.Tensor, int], normalize: bool
) -> None:
    fn, kwargs = PAIRWISE[name]
    embeddings, labels, _ = data
    # Every row the same vector: all distances are at their singular point 0.
    coincident = (
        embeddings.reshape(-1, embeddings.shape[-1])[:1]
        .expand_as(embeddings.reshape(-1, embeddings.shape[-1]))
        .reshape(embeddings.shape)
    )
    options = {**kwargs, "normalize": normalize}
    assert_finite_loss_and_grad(fn, coincident.float(), labels, **options)
    assert_finite_loss_and_grad(fn, coincident, labels, **options)


def test_finite_when_two_embeddings_coincide_in_euclidean_distance() -> None:
    embeddings = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    for fn, kwargs in [
        (LF.contrastive_loss, {}),
        (LF.triplet_margin_loss, {"normalize": False, "mining": "hard"}),
        (LF.triplet_margin_loss, {"normalize": False, "mining": "all"}),
        (LF.triplet_margin_loss, {"normalize": False, "mining": "semihard"}),
    ]:
        assert_finite_loss_and_grad(fn, embeddings, labels, **kwargs)
