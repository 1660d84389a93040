"""linear_cka against Gram-matrix formulas, its invariances, and its errors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench.probing import linear_cka


def _random(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA from Gram matrices and the centering matrix H = I - 11^T / n."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h  # noqa: E741
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))


def _reference_debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Debiased CKA via "U-centering" of the Gram matrices (Szekely & Rizzo, 2014).

    The U-centered matrix has zero diagonal and off-diagonal entries
    K_ij - rowmean_i - colmean_j + grandmean with means taken with n - 2 and
    (n - 1)(n - 2) denominators; its inner products are proportional to HSIC_u.
    """

    def u_center(g: torch.Tensor) -> torch.Tensor:
        n = g.shape[0]
        g = g.clone()
        g.fill_diagonal_(0.0)
        row = g.sum(dim=1) / (n - 2)
        grand = g.sum() / ((n - 1) * (n - 2))
        out = g - row[:, None] - row[None, :] + grand
        out.fill_diagonal_(0.0)
        return out

    k, l = u_center(x @ x.T), u_center(y @ y.T)  # noqa: E741
    return float((k * l).sum() / torch.sqrt((k * k).sum() * (l * l).sum()))


@pytest.mark.parametrize("debiased", [False, True])
def test_identical_inputs_give_one(debiased: bool) -> None:
    x = _random(30, 5, 0)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("n", "d1", "d2"), [(20, 3, 7), (50, 40, 10), (6, 2, 2)])
def test_matches_float64_formulas(n: int, d1: int, d2: int) -> None:
    x, y = _random(n, d1, 1), _random(n, d2, 2)
    y[:, 0] += x[:, 0]
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), rel=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(
        _reference_debiased_cka(x, y), rel=1e-9, abs=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3), debiased=st.booleans())
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(
    seed: int, scale: float, debiased: bool
) -> None:
    x, y = _random(25, 6, seed), _random(25, 4, seed + 1)
    y = y + x[:, :4]
    q, _ = torch.linalg.qr(_random(6, 6, seed + 2))
    base = linear_cka(x, y, debiased=debiased)
    assert linear_cka(scale * x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, scale * y, debiased=debiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(y, x, debiased=debiased) == pytest.approx(base, abs=1e-12)


def test_debiased_removes_high_dimension_bias() -> None:
    x, y = _random(30, 200, 5), _random(30, 200, 6)
    assert linear_cka(x, y) > 0.5  # the plain estimator is biased towards 1
    assert abs(linear_cka(x, y, debiased=True)) < 0.1


def test_flattens_trailing_dimensions_and_accepts_float32() -> None:
    x = _random(10, 12, 7)
    assert linear_cka(x.float().reshape(10, 3, 4), x) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "exc", "fragment"),
    [
        (torch.ones(10, 3), torch.rand(10, 2), {}, ValueError, "x has zero variance"),
        (torch.rand(10, 3), torch.full((10, 2), 0.1), {}, ValueError, "y has zero variance"),
        (
            torch.rand(3, 2),
            torch.rand(3, 2),
            {"debiased": True},
            ValueError,
            "at least 4 samples; got 3",
        ),
        (torch.rand(1, 2), torch.rand(1, 2), {}, ValueError, "at least 2 samples; got 1"),
        (torch.rand(5, 2), torch.rand(6, 2), {}, ValueError, "same number of rows as x (5)"),
        (torch.rand(5), torch.rand(5, 2), {}, ValueError, "x must have shape"),
        (torch.ones(5, 2, dtype=torch.long), torch.rand(5, 2), {}, TypeError, "floating-point"),
        (torch.rand(5, 2), torch.full((5, 2), float("nan")), {}, ValueError, "finite"),
        ([[1.0]], torch.rand(5, 2), {}, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_never_nan(x, y, kwargs, exc, fragment) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        linear_cka(x, y, **kwargs)


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e150, 1e-150])
@pytest.mark.parametrize("debiased", [False, True])
def test_extreme_scales_give_the_unscaled_value(scale: float, debiased: bool) -> None:
    x, y = _random(30, 4, 5), _random(30, 3, 6)
    y[:, 0] += x[:, 1]
    expected = linear_cka(x, y, debiased=debiased)
    got = linear_cka(x * scale, y / scale, debiased=debiased)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize(("n", "d1", "d2"), [(20, 3, 7), (50, 40, 10), (8, 2, 2)])
def test_gram_form_equals_the_feature_form(n: int, d1: int, d2: int, debiased: bool) -> None:
    from nodulebench.probing import gram_linear_cka

    x, y = _random(n, d1, 3), _random(n, d2, 4)
    y[:, 0] += 2 * x[:, 0]
    assert gram_linear_cka(x @ x.T, y @ y.T, debiased=debiased) == pytest.approx(
        linear_cka(x, y, debiased=debiased), rel=1e-9, abs=1e-12
    )
    assert gram_linear_cka(1e200 * (x @ x.T), 1e-200 * (y @ y.T)) == pytest.approx(
        linear_cka(x, y), rel=1e-9
    )


@pytest.mark.parametrize(
    ("k", "l", "error", "message"),
    [
        (torch.ones(3, 4), torch.ones(3, 3), ValueError, "square Gram matrix"),
        (torch.eye(4), torch.eye(5), ValueError, "same size as k"),
        (torch.zeros(4, 4), torch.eye(4), ValueError, "k is zero"),
        (torch.ones(4, 4), torch.eye(4), ValueError, "zero variance"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.eye(2), ValueError, "symmetric"),
        (torch.eye(4, dtype=torch.long), torch.eye(4), TypeError, "floating-point"),
        (torch.full((4, 4), float("nan")), torch.eye(4), ValueError, "finite"),
    ],
)
def test_gram_form_rejects_bad_input(
    k: torch.Tensor,
    l: torch.Tensor,  # noqa: E741
    error: type[Exception],
    message: str,
) -> None:
    from nodulebench.probing import gram_linear_cka

    with pytest.raises(error, match=message):
        gram_linear_cka(k, l)
