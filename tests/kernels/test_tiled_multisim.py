"""Tiled multi-similarity against a dense reference written here from the formula."""

from __future__ import annotations

import math

import pytest
import torch

from _loss_cases import KERNEL_CASES
from _loss_cases import make_case as shared_case
from nodulebench.kernels.dispatch import get_backend_info, run_per_anchor
from nodulebench.kernels.tiled import multi_similarity_tiled

TOL = get_backend_info("tiled").tolerances


def dense_multi_similarity(
    z: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    base: float,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    s = z @ z.T
    eye = torch.eye(z.shape[0], dtype=torch.bool)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    max_neg = s.masked_fill(~neg, float("-inf")).max(dim=1).values
    min_pos = s.masked_fill(~pos, float("inf")).min(dim=1).values
    keep_pos = pos & (s - epsilon < max_neg[:, None])
    keep_neg = neg & (s + epsilon > min_pos[:, None])
    pos_part = torch.log(1 + torch.where(keep_pos, torch.exp(-alpha * (s - base)), 0.0).sum(1))
    neg_part = torch.log(1 + torch.where(keep_neg, torch.exp(beta * (s - base)), 0.0).sum(1))
    valid = pos.any(dim=1)
    return torch.where(valid, pos_part / alpha + neg_part / beta, 0.0), valid


def make_case(name: str, dtype: torch.dtype, rows: int = 27) -> tuple[torch.Tensor, torch.Tensor]:
    return shared_case(
        name, dtype, rows=rows, dim=4, classes=4, seed=5, views=2, singletons=1, normalize=True
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_matches_dense(case: str, dtype: torch.dtype) -> None:
    z, labels = make_case(case, dtype)
    options = {"alpha": 2.0, "beta": 10.0, "base": 0.5, "epsilon": 0.1}
    w = torch.randn(z.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(2))
    z_ref = z.double().requires_grad_()
    expected, expected_valid = dense_multi_similarity(z_ref, labels, **options)
    (expected_grad,) = torch.autograd.grad((expected * w.double()).sum(), z_ref)
    rtol, atol = TOL[dtype]
    for block_size in (5, 64):
        z_k = z.clone().requires_grad_()
        loss, valid = multi_similarity_tiled(z_k, labels, block_size=block_size, **options)
        (grad,) = torch.autograd.grad((loss * w).sum(), z_k)
        assert torch.equal(valid, expected_valid)
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


def test_gradcheck_float64() -> None:
    z, labels = make_case("random_with_singletons", torch.float64)
    z = z[:12].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: multi_similarity_tiled(x, labels[:12], beta=5.0, block_size=5)[0], (z,)
    )


def test_bad_options() -> None:
    z, labels = torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="alpha"):
        multi_similarity_tiled(z, labels, alpha=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        multi_similarity_tiled(z, labels, epsilon=-0.1)
    with pytest.raises(TypeError, match="base"):
        multi_similarity_tiled(z, labels, base="0.5")  # type: ignore[arg-type]


def test_large_similarities_do_not_overflow() -> None:
    # Unnormalized rows: beta * S reaches ~1000, so exp(.) overflows even float64; the
    # kernel's log-sum-exp must still match the reference's value and gradient.
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for dtype in (torch.float32, torch.float64):
        z = (2.0 * torch.randn(8, 4, generator=gen, dtype=torch.float64)).to(dtype)
        z_ref = z.double().requires_grad_()
        expected, _ = run_per_anchor("multi_similarity", z_ref, labels, backend="reference")
        (expected_grad,) = torch.autograd.grad(expected.sum(), z_ref)
        assert torch.isfinite(expected).all() and expected.max() > 10.0
        for block_size in (3, 8):
            z_k = z.clone().requires_grad_()
            loss, _ = multi_similarity_tiled(z_k, labels, block_size=block_size)
            (grad,) = torch.autograd.grad(loss.sum(), z_k)
            rtol, atol = TOL[dtype]
            torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
            torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


def test_overflowing_single_pair_is_its_exponent_over_beta() -> None:
    # One kept negative with beta * (S - base) = 50 * (400 - 0.5): the negative term is
    # log(1 + e^x) / beta = x / beta + log1p(e^-x) / beta, i.e. S - base to float64.
    z = torch.tensor([[20.0, 0.0], [20.0, 0.0], [20.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss, valid = multi_similarity_tiled(z, labels)
    # Anchor 0: positive S = 400 (kept: 400 - 0.1 < 400), negative S = 400 (kept).
    positive_term = math.log1p(math.exp(-2.0 * 399.5)) / 2.0
    assert valid.tolist() == [True, True, False]
    torch.testing.assert_close(loss[0].item(), 399.5 + positive_term, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_non_finite_rows_give_nan_not_a_finite_loss(backend: str, bad: float) -> None:
    z = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), dim=1
    )
    z[0, 0] = bad
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss, valid = run_per_anchor("multi_similarity", z, labels, backend=backend)
    assert valid.all()
    assert not torch.isfinite(loss).all()
