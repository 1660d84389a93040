"""Tiled SupCon against the suite's loop reference (values) and the dense backend (gradients)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _loss_cases import KERNEL_CASES, ref_supcon
from _loss_cases import make_case as shared_case
from nodulebench.kernels._reference import supcon_reference
from nodulebench.kernels.dispatch import get_backend_info, run_per_anchor
from nodulebench.kernels.tiled import supcon_tiled

TOL = get_backend_info("tiled").tolerances


def make_case(name: str, dtype: torch.dtype, rows: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    return shared_case(
        name, dtype, rows=rows, dim=6, classes=5, seed=7, views=3, singletons=3, normalize=True
    )


CASES = KERNEL_CASES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_dense(case: str, variant: str, dtype: torch.dtype) -> None:
    z, labels = make_case(case, dtype)
    weights = torch.randn(z.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(1))
    # Values from the suite's loop reference; gradients from the dense reference backend.
    expected = ref_supcon(
        z.double(), labels, temperature=0.2, variant=variant, normalize=False, reduction="none"
    )
    z_ref = z.detach().double().requires_grad_()
    dense, expected_valid = supcon_reference(z_ref, labels, temperature=0.2, variant=variant)
    (expected_grad,) = torch.autograd.grad((dense * weights.double()).sum(), z_ref)
    rtol, atol = TOL[dtype]
    for block_size in (1, 5, 8, None):  # N is never a multiple of 5 or 8 here
        z_k = z.detach().clone().requires_grad_()
        loss, valid = supcon_tiled(
            z_k, labels, temperature=0.2, variant=variant, block_size=block_size
        )
        (grad,) = torch.autograd.grad((loss * weights).sum(), z_k)
        assert loss.dtype == dtype
        assert torch.equal(valid, expected_valid)
        assert torch.all(loss[~valid] == 0)
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_gradcheck_float64(variant: str) -> None:
    z, labels = make_case("random_with_singletons", torch.float64)
    z = z[:11].clone().requires_grad_()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return supcon_tiled(x, labels[:11], temperature=0.5, variant=variant, block_size=4)[0]

    assert torch.autograd.gradcheck(fn, (z,))


def test_low_temperature_stays_finite() -> None:
    z, labels = make_case("multi_view", torch.float32)
    z.requires_grad_()
    loss, _ = supcon_tiled(z, labels, temperature=1e-3, variant="in", block_size=8)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 1000.0])
def test_one_positive_and_no_negative_is_exactly_zero(
    scale: float, variant: str, dtype: torch.dtype
) -> None:
    # B = 1, V = 2 unnormalized: each view's only other row is its positive, so
    # l = LSE(s) - s = 0 exactly, with a zero gradient, at any scale.
    gen = torch.Generator().manual_seed(0)
    z = (scale * torch.randn(2, 16, generator=gen, dtype=torch.float64)).to(dtype)
    z.requires_grad_()
    loss, valid = supcon_tiled(z, torch.tensor([0, 0]), temperature=0.1, variant=variant)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert valid.all()
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 1000.0])
def test_unnormalized_error_is_relative_to_the_logits(scale: float, variant: str) -> None:
    # Long, nearly orthogonal rows: the logits (~ 0.003 |z|^2 / tau) are much smaller than
    # |z|^2 / tau, so a positive term formed as z_i . (S_c - z_i) from class sums would
    # err by roundings of |z|^2 / tau (25-60x the bound below at scales 10 and 1000);
    # computed from the logits, the error is that of the logits and of the loss itself.
    gen = torch.Generator().manual_seed(1)
    z = torch.eye(24, dtype=torch.float64) + 0.001 * torch.randn(
        24, 24, generator=gen, dtype=torch.float64
    )
    z = scale * z
    labels = torch.arange(24) % 3
    expected, _ = run_per_anchor(
        "supcon", z, labels, backend="reference", temperature=0.1, variant=variant
    )
    loss, _ = supcon_tiled(z.float(), labels, temperature=0.1, variant=variant, block_size=7)
    off_diagonal = (z @ z.T).fill_diagonal_(0.0)
    logit_scale = off_diagonal.abs().amax(dim=1) / 0.1
    error = (loss.double() - expected).abs()
    # A few float32 roundings of the row's largest logit and of its loss.
    bound = 8 * torch.finfo(torch.float32).eps * (logit_scale + expected.abs())
    assert bool((error <= bound).all()), (error / logit_scale).max().item()


def test_no_valid_anchor_gives_zero_loss_and_zero_gradient() -> None:
    z = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    z.requires_grad_()
    loss, valid = supcon_tiled(z, torch.arange(5), temperature=0.1, block_size=2)
    loss.sum().backward()
    assert not valid.any()
    assert torch.equal(loss, torch.zeros(5, dtype=torch.float64))
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=24),
    num_classes=st.integers(min_value=1, max_value=6),
    block_size=st.integers(min_value=1, max_value=9),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_rows_permute_with_the_inputs(n: int, num_classes: int, block_size: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    perm = torch.randperm(n, generator=gen)
    loss, valid = supcon_tiled(z, labels, temperature=0.3, block_size=block_size)
    loss_p, valid_p = supcon_tiled(z[perm], labels[perm], temperature=0.3, block_size=block_size)
    torch.testing.assert_close(loss_p, loss[perm], rtol=1e-10, atol=1e-12)
    assert torch.equal(valid_p, valid[perm])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": 0.1, "variant": "both"}, ValueError, "variant"),
        ({"temperature": 0.1, "block_size": 0}, ValueError, "block_size"),
        ({"temperature": 0.1, "block_size": 2.5}, ValueError, "block_size"),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    z = torch.randn(4, 3)
    with pytest.raises(error, match=match):
        supcon_tiled(z, torch.zeros(4, dtype=torch.int64), **kwargs)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    labels = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        supcon_tiled(torch.randn(4, 2, 3), labels, temperature=0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        supcon_tiled(torch.randn(4, 3).half(), labels, temperature=0.1)
    with pytest.raises(TypeError, match="labels must have dtype torch.int64"):
        supcon_tiled(torch.randn(4, 3), labels.int(), temperature=0.1)
    with pytest.raises(ValueError, match="one entry per row"):
        supcon_tiled(torch.randn(5, 3), labels, temperature=0.1)
