r"""Linear centered kernel alignment (CKA) between two representations of the same samples.

CKA (Kornblith et al., ICML 2019) compares representations up to orthogonal transforms
and isotropic scaling: 1 means the same geometry, 0 no linear relation.
:func:`linear_cka` takes the representations; :func:`gram_linear_cka` takes their
``(n, n)`` Gram matrices, whose size does not grow with a feature map's spatial extent.
Both rescale their inputs first (CKA is scale invariant), so no scale over- or underflows.
"""

from __future__ import annotations

import torch

from nodulebench._validation import check_floating

__all__ = ["gram_linear_cka", "linear_cka"]


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
        scale = float(matrix.abs().max())
        if scale == 0.0:
            raise ValueError(f"{name} has zero variance (every row is the same); CKA is undefined")
        matrix = matrix / scale  # CKA is scale invariant; this keeps 1e+-200 in range
        deviation = matrix - matrix.mean(dim=0)
        # Relative test: the mean of equal rows can differ from them by rounding.
        if float(deviation.abs().max()) <= 1e-12:
            raise ValueError(f"{name} has zero variance (every row is the same); CKA is undefined")
        centered.append(deviation)
    a, b = centered
    if debiased:
        return _debiased_from_grams(a @ a.T, b @ b.T)
    cross = torch.linalg.matrix_norm(b.T @ a) ** 2
    return float(cross / (torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)))


def _debiased_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    self_x, self_y = _unbiased_hsic(k, k), _unbiased_hsic(l, l)
    if self_x <= 0 or self_y <= 0:
        raise ValueError(
            "the debiased self-similarity of x or y is not positive "
            f"({float(self_x):.3g}, {float(self_y):.3g}); use more samples or debiased=False"
        )
    return float(_unbiased_hsic(k, l) / torch.sqrt(self_x * self_y))


def _as_gram(name: str, value: torch.Tensor) -> torch.Tensor:
    """A finite, symmetric ``(n, n)`` float64 Gram matrix, rescaled and double-centered."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != 2 or value.shape[0] != value.shape[1]:
        raise ValueError(
            f"{name} must be a square Gram matrix (n, n); got shape {tuple(value.shape)}"
        )
    check_floating(name, value)
    gram = value.detach().to(torch.float64)
    if not torch.isfinite(gram).all():
        raise ValueError(f"{name} must be finite; got NaN or inf values")
    scale = float(gram.abs().max())
    if scale == 0.0:
        raise ValueError(f"{name} is zero: the representation has zero variance; CKA is undefined")
    gram = gram / scale
    if not torch.allclose(gram, gram.T, rtol=1e-5, atol=1e-7):
        raise ValueError(f"{name} must be symmetric (a Gram matrix X X^T)")
    # H K H with H = I - 11^T / n: the Gram matrix of the column-centered features.
    centered = gram - gram.mean(dim=0, keepdim=True) - gram.mean(dim=1, keepdim=True) + gram.mean()
    if float(centered.abs().max()) <= 1e-12:
        raise ValueError(f"{name} has zero variance (every row is the same); CKA is undefined")
    return centered


def gram_linear_cka(
    k: torch.Tensor,
    l: torch.Tensor,  # noqa: E741
    *,
    debiased: bool = False,
) -> float:
    r"""Linear CKA from the Gram matrices :math:`K = XX^\top` and :math:`L = YY^\top`.

    Equal to :func:`linear_cka` of the representations, computed from the double-centered
    Gram matrices :math:`\tilde K = HKH`, :math:`H = I - \tfrac1n \mathbf 1\mathbf 1^\top`:

    .. math::

        \operatorname{CKA} = \frac{\langle \tilde K, \tilde L\rangle_F}
        {\lVert \tilde K\rVert_F\,\lVert \tilde L\rVert_F},

    or with the unbiased HSIC estimator when ``debiased=True``. Use it when the
    representations are large (unpooled feature maps) and only ``n x n`` Grams are kept.

    Args:
        k: ``(n, n)`` Gram matrix of the first representation (rows: samples).
        l: ``(n, n)`` Gram matrix of the second, same samples in the same order.
        debiased: Use the unbiased HSIC estimator (needs ``n >= 4``).

    Returns:
        The CKA as a Python float. Never NaN.

    Raises:
        ValueError: If a matrix is not square and symmetric, sizes differ, ``n`` is too
            small, a representation has zero variance, or a value is not finite.
        TypeError: If an input is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from nodulebench.probing import gram_linear_cka, linear_cka
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)
        >>> abs(gram_linear_cka(x @ x.T, y @ y.T) - linear_cka(x, y)) < 1e-6
        True
    """
    a, b = _as_gram("k", k), _as_gram("l", l)
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"l must have the same size as k ({n}); got {b.shape[0]}")
    minimum = 4 if debiased else 2
    if n < minimum:
        kind = "debiased " if debiased else ""
        raise ValueError(f"{kind}gram_linear_cka needs at least {minimum} samples; got {n}")
    if debiased:
        return _debiased_from_grams(a, b)
    return float((a * b).sum() / (torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b)))
