"""The ``backend=`` argument of every pairwise loss: same values and gradients everywhere."""

from __future__ import annotations

import pytest
import torch

from nodulebench import (
    ContrastiveLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
)
from nodulebench.kernels.dispatch import TILED_CROSSOVER, select_backend
from nodulebench.losses import functional as LF

CASES = [
    (SupConLoss, {"variant": "out"}),
    (SupConLoss, {"variant": "in", "base_temperature": 0.07}),
    (ContrastiveLoss, {"margin": 1.5}),
    (TripletMarginLoss, {"mining": "hard"}),
    (TripletMarginLoss, {"mining": "all", "distance": "squared_euclidean"}),
    (MultiSimilarityLoss, {}),
]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(11, 2, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 1, 7])  # label 7: views only
    return embeddings, labels


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(("cls", "options"), CASES)
def test_tiled_backend_equals_reference(cls: type, options: dict, reduction: str) -> None:
    embeddings, labels = batch()
    results = []
    for backend in ("reference", "tiled"):
        x = embeddings.clone().requires_grad_()
        loss_fn = cls(reduction=reduction, backend=backend, **options)
        loss = loss_fn(x, labels)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach(), grad, loss_fn.num_excluded_anchors))
    (ref, ref_grad, ref_excluded), (got, grad, excluded) = results
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert excluded == ref_excluded


# The edges of what each loss's option checks accept: every backend must accept them too.
BOUNDARY_CASES = [
    (ContrastiveLoss, {"margin": 0.0}),
    (TripletMarginLoss, {"mining": "hard", "margin": 0.0}),
    (TripletMarginLoss, {"mining": "all", "margin": 0.0, "distance": "cosine"}),
    (MultiSimilarityLoss, {"epsilon": 0.0, "base": -1.0}),
    (MultiSimilarityLoss, {"base": 1.0}),
]


@pytest.mark.parametrize(("cls", "options"), BOUNDARY_CASES)
def test_option_boundaries_accepted_by_every_backend(cls: type, options: dict) -> None:
    embeddings, labels = batch()
    results = []
    for backend in ("reference", "tiled"):
        x = embeddings.clone().requires_grad_()
        loss = cls(backend=backend, **options)(x, labels)
        (grad,) = torch.autograd.grad(loss, x)
        results.append((loss.detach(), grad))
    (ref, ref_grad), (got, grad) = results
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_contrastive_margin_zero_where_auto_switches_to_tiled() -> None:
    # margin=0 worked below the crossover and raised from it on (the tiled check differed).
    n = TILED_CROSSOVER["contrastive"]
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (n,), generator=gen)
    assert select_backend("contrastive", "auto", embeddings) == "tiled"
    auto = ContrastiveLoss(margin=0.0)(embeddings, labels)
    reference = ContrastiveLoss(margin=0.0, backend="reference")(embeddings, labels)
    torch.testing.assert_close(auto, reference, rtol=1e-10, atol=1e-12)


def test_ntxent_tiled_equals_reference() -> None:
    embeddings, _ = batch()
    ref = NTXentLoss(backend="reference")(embeddings)
    got = NTXentLoss(backend="tiled")(embeddings)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_functional_accepts_backend() -> None:
    embeddings, labels = batch()
    ref = LF.supcon_loss(embeddings, labels, backend="reference")
    torch.testing.assert_close(LF.supcon_loss(embeddings, labels, backend="tiled"), ref)


def test_unknown_backend_is_rejected_at_construction() -> None:
    with pytest.raises(
        ValueError,
        match="backend must be one of 'auto', 'reference', 'tiled', 'triton'; got 'cuda'",
    ):
        SupConLoss(backend="cuda")


def test_forced_backend_that_cannot_serve_says_why() -> None:
    embeddings, labels = batch()
    with pytest.raises(ValueError, match="backend='tiled' cannot compute 'triplet_semihard'"):
        TripletMarginLoss(mining="semihard", backend="tiled")(embeddings, labels)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='triton' cannot compute 'supcon'"):
            SupConLoss(backend="triton")(embeddings.float(), labels)


def test_auto_serves_semihard_and_low_precision_on_cpu() -> None:
    embeddings, labels = batch()
    loss = TripletMarginLoss(mining="semihard")(embeddings, labels)
    assert torch.isfinite(loss)
    half = SupConLoss()(embeddings.bfloat16(), labels)
    assert half.dtype == torch.float32 and torch.isfinite(half)
