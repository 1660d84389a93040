"""Loss values against the loop-based references of ``_loss_cases``, and gradcheck."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from _loss_cases import (
    make_batch,
    ref_contrastive,
    ref_contrastive_pml,
    ref_cross_entropy,
    ref_multi_similarity,
    ref_supcon,
    ref_triplet,
)
from nodulebench.losses import functional as LF

SHAPES = [(7, None, 5, 3), (5, 2, 4, 3), (6, 3, 3, 6)]  # (B, V, D, classes)
REDUCTIONS = ["mean", "sum", "none"]

Case = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], dict[str, object]]
CASES: dict[str, Case] = {
    "supcon-out": (LF.supcon_loss, ref_supcon, {"temperature": 0.1}),
    "supcon-in": (LF.supcon_loss, ref_supcon, {"temperature": 0.5, "variant": "in"}),
    "supcon-base": (
        LF.supcon_loss,
        ref_supcon,
        {"temperature": 0.2, "base_temperature": 0.07, "normalize": False},
    ),
    "contrastive": (LF.contrastive_loss, ref_contrastive, {"margin": 2.0}),
    "contrastive-norm": (LF.contrastive_loss, ref_contrastive, {"margin": 1.0, "normalize": True}),
    "contrastive-pml": (
        LF.contrastive_loss,
        ref_contrastive_pml,
        {"form": "pml", "normalize": True},
    ),
    "contrastive-pml-margins": (
        LF.contrastive_loss,
        ref_contrastive_pml,
        {"form": "pml", "pos_margin": 0.5, "margin": 2.0},
    ),
    "triplet-hard": (LF.triplet_margin_loss, ref_triplet, {"margin": 0.5}),
    "triplet-all": (LF.triplet_margin_loss, ref_triplet, {"mining": "all", "margin": 0.5}),
    "triplet-semihard": (
        LF.triplet_margin_loss,
        ref_triplet,
        {"mining": "semihard", "margin": 0.3},
    ),
    "triplet-all-sq-raw": (
        LF.triplet_margin_loss,
        ref_triplet,
        {"mining": "all", "distance": "squared_euclidean", "normalize": False, "margin": 1.0},
    ),
    "triplet-hard-cos-raw": (
        LF.triplet_margin_loss,
        ref_triplet,
        {"distance": "cosine", "normalize": False},
    ),
    "triplet-semihard-cos": (
        LF.triplet_margin_loss,
        ref_triplet,
        {"mining": "semihard", "distance": "cosine"},
    ),
    "multi-similarity": (LF.multi_similarity_loss, ref_multi_similarity, {}),
    "multi-similarity-soft": (
        LF.multi_similarity_loss,
        ref_multi_similarity,
        {"alpha": 1.0, "beta": 5.0, "base": 0.0, "epsilon": 0.5},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_loop_reference(
    name: str, shape: tuple[int, int | None, int, int], reduction: str
) -> None:
    fn, ref, kwargs = CASES[name]
    for seed in range(2):
        embeddings, labels = make_batch(seed, *shape)
        got = fn(embeddings, labels, reduction=reduction, **kwargs)
        want = ref(embeddings, labels, reduction=reduction, **kwargs)
        assert got.dtype == torch.float64
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_supcon_without_labels_matches_reference(reduction: str) -> None:
    embeddings, _ = make_batch(3, 5, 3, 4, 1)
    got = LF.supcon_loss(embeddings, None, temperature=0.3, reduction=reduction)
    want = ref_supcon(embeddings, None, temperature=0.3, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_reference(smoothing: float, weighted: bool, reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2, 0])
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    got = LF.cross_entropy_loss(
        logits, targets, label_smoothing=smoothing, weight=weight, reduction=reduction
    )
    want = ref_cross_entropy(
        logits, targets, label_smoothing=smoothing, weight=weight, reduction=reduction
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


GRAD_CASES = [
    (LF.supcon_loss, {"temperature": 0.5}),
    (LF.supcon_loss, {"temperature": 0.5, "variant": "in", "base_temperature": 0.7}),
    (LF.contrastive_loss, {"margin": 3.0}),
    (LF.contrastive_loss, {"form": "pml", "margin": 3.0, "pos_margin": 0.2}),
    (LF.triplet_margin_loss, {"mining": "hard", "margin": 1.0}),
    (LF.triplet_margin_loss, {"mining": "all", "margin": 1.0, "distance": "cosine"}),
    (
        LF.triplet_margin_loss,
        {"mining": "semihard", "margin": 1.0, "distance": "squared_euclidean"},
    ),
    (LF.multi_similarity_loss, {"beta": 10.0}),
]


@pytest.mark.parametrize(("fn", "kwargs"), GRAD_CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_gradcheck_float64(fn: Callable[..., torch.Tensor], kwargs: dict[str, object]) -> None:
    embeddings, _ = make_batch(11, 4, 2, 3, 2)
    labels = torch.tensor([0, 1, 0, 1])
    embeddings.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, **kwargs), (embeddings,))
    assert torch.autograd.gradcheck(
        lambda e: fn(e, labels, reduction="none", **kwargs), (embeddings,)
    )


def test_gradcheck_cross_entropy() -> None:
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: LF.cross_entropy_loss(x, targets, label_smoothing=0.1, weight=weight), (logits,)
    )


def test_ntxent_two_views_matches_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    got = LF.ntxent_loss(a, b, temperature=0.5, reduction="none")
    want = ref_supcon(torch.stack((a, b), dim=1), None, temperature=0.5, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
