r"""Linear centered kernel alignment (CKA) between two representations of the same samples.

CKA (Kornblith et al., ICML 2019) compares representations up to orthogonal transforms
and isotropic scaling: 1 means the same geometry, 0 no linear relation.
"""

from __future__ import annotations

import torch

from nodulebench._validation import check_floating

__all__ = ["linear_cka"]


def _as_matrix(name: str, value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim < 2:
        raise ValueError(f"{name} must have shape (N, D) or (N, *); got shape {tuple(value.shape)}")
    check_floating(name, value)
    matrix = value.detach().flatten(1).to(torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} must be finite; got NaN or inf values")
    return matrix


def _unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """Unbiased HSIC estimator of Song et al. (2012) from two Gram matrices."""
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    l = l - torch.diag(torch.diagonal(l))  # noqa: E741
    trace = (k * l).sum()
    sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
    cross = 2.0 * (k.sum(dim=0) @ l.sum(dim=1)) / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    r"""Linear CKA between ``x`` and ``y``, computed in float64.

    With column-centered :math:`X` and :math:`Y`,

    .. math::

        \operatorname{CKA}(X, Y) = \frac{\lVert Y^\top X\rVert_F^2}
        {\lVert X^\top X\rVert_F\,\lVert Y^\top Y\rVert_F}.

    With ``debiased=True`` each HSIC is replaced by the unbiased estimator of Song et al.
    (2012) on the Gram matrices :math:`K = XX^\top`, :math:`L = YY^\top` with zeroed
    diagonals (:math:`\tilde K`, :math:`\tilde L`),

    .. math::

        \operatorname{HSIC}_u(K, L) = \frac{1}{n(n-3)}\Big[\operatorname{tr}(\tilde K
        \tilde L) + \frac{\mathbf 1^\top\tilde K\mathbf 1\,\mathbf 1^\top\tilde L\mathbf 1}
        {(n-1)(n-2)} - \frac{2}{n-2}\mathbf 1^\top\tilde K\tilde L\mathbf 1\Big],

    which removes the bias of the plain estimator towards 1 when the feature dimension
    is large relative to ``n`` (Nguyen et al., 2021). It needs ``n >= 4`` and builds
    ``(n, n)`` Gram matrices; the plain form works on ``(D, D')`` cross-covariances.

    Args:
        x: ``(N, D1)`` representation (trailing dimensions are flattened).
        y: ``(N, D2)`` representation of the same samples in the same order.
        debiased: Use the unbiased HSIC estimator.

    Returns:
        The CKA as a Python float; in ``[0, 1]`` for the plain form (the debiased one can
        be slightly negative).

    Raises:
        ValueError: If the row counts differ, ``n < 2`` (``n < 4`` when debiased), a
            representation has zero variance, or a value is not finite. Never NaN.
        TypeError: If an input is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from nodulebench.probing import linear_cka
        >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
        >>> round(linear_cka(x, 3 * x), 6)
        1.0
    """
    a, b = _as_matrix("x", x), _as_matrix("y", y)
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"y must have the same number of rows as x ({n}); got {b.shape[0]}")
    minimum = 4 if debiased else 2
    if n < minimum:
        kind = "debiased " if debiased else ""
        raise ValueError(f"{kind}linear_cka needs at least {minimum} samples; got {n}")
    centered = []
    for name, matrix in (("x", a), ("y", b)):
        deviation = matrix - matrix.mean(dim=0)
        # Relative test: the mean of equal rows can differ from them by rounding.
        scale = float(matrix.abs().max())
        if float(deviation.abs().max()) <= 1e-12 * scale or scale == 0.0:
            raise ValueError(f"{name} has zero variance (every row is the same); CKA is undefined")
        centered.append(deviation)
    a, b = centered
    if debiased:
        k, l = a @ a.T, b @ b.T  # noqa: E741
        self_x, self_y = _unbiased_hsic(k, k), _unbiased_hsic(l, l)
        if self_x <= 0 or self_y <= 0:
            raise ValueError(
                "the debiased self-similarity of x or y is not positive "
                f"({float(self_x):.3g}, {float(self_y):.3g}); use more samples or debiased=False"
            )
        return float(_unbiased_hsic(k, l) / torch.sqrt(self_x * self_y))
    cross = torch.linalg.matrix_norm(b.T @ a) ** 2
    return float(cross / (torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)))
