"""Tiled multi-similarity against a dense reference written here from the formula."""

from __future__ import annotations

import pytest
import torch

from nodulebench.kernels.dispatch import get_backend_info
from nodulebench.kernels.tiled import multi_similarity_tiled

TOL = get_backend_info("tiled").tolerances


def dense_multi_similarity(
    z: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, base: float,
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


def make_case(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    if name == "multi_view":
        labels = torch.randint(0, 4, (12,), generator=gen).repeat_interleave(2)
    elif name == "labels_none":
        labels = torch.arange(13).repeat_interleave(2)
    else:
        labels = torch.randint(0, 4, (27,), generator=gen)
        labels[0] = 77
    z = torch.randn(labels.shape[0], 4, generator=gen, dtype=torch.float64)
    if name == "duplicates":
        z[3] = z[8]
        z[10] = z[8]
    return torch.nn.functional.normalize(z, dim=1).to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["random_with_singletons", "duplicates", "multi_view",
                                  "labels_none"])
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
