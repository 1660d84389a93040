r"""Tiled multi-similarity loss (Wang et al. 2019) with recompute backward.

On unit rows, :math:`S_{ij} = z_i \cdot z_j`. Anchor :math:`i` keeps a positive :math:`p`
if :math:`S_{ip} - \epsilon < \max_{n \in \mathrm{Neg}(i)} S_{in}` and a negative :math:`n`
if :math:`S_{in} + \epsilon > \min_{p \in P(i)} S_{ip}`; then

.. math::

    \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{\text{kept } p} e^{-\alpha (S_{ip} - \lambda)}
        \Big) + \frac{1}{\beta} \log\Big(1 + \sum_{\text{kept } n} e^{\beta (S_{in} - \lambda)}
        \Big).

Both extremes and both logarithms are per-row reductions over a row block's ``(b, N)``
tile (``(b, M)`` against a reference set of ``M`` rows), so the forward pass keeps four
numbers per row. Each logarithm is a log-sum-exp
over the kept exponents and a zero (the ``1 +``), so no ``exp`` overflows however large
:math:`S` is (``normalize=False``). The mining masks are comparisons (no gradient),
written so that a NaN similarity keeps its pair and reaches the loss; the backward pass
rebuilds them from the saved extremes, forms
:math:`W_{ij} = g_i\,\partial \ell_i / \partial S_{ij}` tile by tile (each weight is
:math:`e^{x_{ij} - \ell}` with the saved logarithm :math:`\ell`, at most 1) and adds
:math:`(W + W^\top) z`.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_positive
from nodulebench.kernels._tiling import (
    check_prepared,
    eager_under_compile,
    join_reference,
    reference_rows,
    row_blocks,
    self_mask,
    split_rows,
    stack_rows,
)

__all__ = ["multi_similarity_tiled"]


def _masks(
    labels: torch.Tensor, r0: int, r1: int, columns: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-label and positive (same label, not self) masks of a row block's columns."""
    k0, k1 = columns
    same = labels[r0:r1, None] == labels[None, k0:k1]
    return same, same & ~self_mask(r0, r1, k1, labels.device, k0)


def _kept_exponents(
    s: torch.Tensor,
    labels: torch.Tensor,
    r0: int,
    r1: int,
    columns: tuple[int, int],
    max_neg: torch.Tensor,
    min_pos: torch.Tensor,
    options: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponents of the kept positives and kept negatives of a block (``-inf`` elsewhere).

    Mining is written as negated comparisons, as in the reference, so that a NaN
    similarity (or extreme) keeps its pair and the NaN reaches the loss.
    """
    alpha, beta, base, epsilon = options
    same, pos = _masks(labels, r0, r1, columns)
    keep_pos = pos & ~(s - epsilon >= max_neg[:, None])
    keep_neg = ~same & ~(s + epsilon <= min_pos[:, None])
    pos_exponents = torch.where(keep_pos, -alpha * (s - base), float("-inf"))
    neg_exponents = torch.where(keep_neg, beta * (s - base), float("-inf"))
    return pos_exponents, neg_exponents


def _log1p_sum_exp(exponents: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum exp(exponents))`` without overflow (0 for an all ``-inf`` row)."""
    return torch.logaddexp(torch.zeros_like(exponents[:, 0]), torch.logsumexp(exponents, dim=1))


class _MultiSimilarityTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        ref_z: torch.Tensor | None,
        labels: torch.Tensor,
        options: tuple[float, float, float, float],
        block_size: int,
        row_range: tuple[int, int],
        columns: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = stack_rows(z, ref_z)
        # Anchors are rows a0:a1 of z, the columns rows `columns` (all rows by default).
        a0, a1 = row_range
        z_cols = z[columns[0] : columns[1]]
        alpha, beta = options[0], options[1]
        stats = torch.zeros(4, a1 - a0, dtype=z.dtype, device=z.device)
        max_neg, min_pos, pos_log, neg_log = stats.unbind(0)
        valid = torch.zeros(a1 - a0, dtype=torch.bool, device=z.device)
        for r0, r1 in row_blocks(a1, block_size, a0):
            k0, k1 = r0 - a0, r1 - a0
            s = z[r0:r1] @ z_cols.T
            same, pos = _masks(labels, r0, r1, columns)
            max_neg[k0:k1] = s.masked_fill(same, float("-inf")).amax(dim=1)
            min_pos[k0:k1] = s.masked_fill(~pos, float("inf")).amin(dim=1)
            valid[k0:k1] = pos.any(dim=1)
            pos_exponents, neg_exponents = _kept_exponents(
                s, labels, r0, r1, columns, max_neg[k0:k1], min_pos[k0:k1], options
            )
            pos_log[k0:k1] = _log1p_sum_exp(pos_exponents)
            neg_log[k0:k1] = _log1p_sum_exp(neg_exponents)
        raw = pos_log / alpha + neg_log / beta
        loss = torch.where(valid, raw, torch.zeros_like(raw))
        ctx.save_for_backward(z, labels, stats, valid)
        ctx.options = (options, block_size, row_range, columns, reference_rows(ref_z))
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, stats, valid = ctx.saved_tensors
        options, block_size, (a0, a1), columns, ref_rows = ctx.options
        z_cols = z[columns[0] : columns[1]]
        max_neg, min_pos, pos_log, neg_log = stats.unbind(0)
        g = torch.where(valid, grad_loss, torch.zeros_like(grad_loss))
        grad_z = torch.zeros_like(z)
        for r0, r1 in row_blocks(a1, block_size, a0):
            k0, k1 = r0 - a0, r1 - a0
            z_rows = z[r0:r1]
            s = z_rows @ z_cols.T
            pos_exponents, neg_exponents = _kept_exponents(
                s, labels, r0, r1, columns, max_neg[k0:k1], min_pos[k0:k1], options
            )
            # d/dS of (1/a) log(1 + sum e^{x}), x = -a(S - l), is -e^{x} / (1 + sum) =
            # -e^{x - pos_log}; of (1/b) log(1 + sum e^{x}), x = b(S - l), e^{x - neg_log}.
            weight = neg_exponents.sub_(neg_log[k0:k1, None]).exp_()
            weight.sub_(pos_exponents.sub_(pos_log[k0:k1, None]).exp_())
            weight.mul_(g[k0:k1, None])
            grad_z[r0:r1].addmm_(weight, z_cols)
            grad_z[columns[0] : columns[1]].addmm_(weight.T, z_rows)
        return (*split_rows(grad_z, ref_rows), None, None, None, None, None)


@eager_under_compile
def multi_similarity_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor multi-similarity loss with mining, in :math:`O(N D + b N)` memory.

    Args:
        z: Prepared (L2-normalized) embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        alpha: Positive scale :math:`\alpha > 0`.
        beta: Negative scale :math:`\beta > 0`.
        base: Similarity offset :math:`\lambda`.
        epsilon: Mining margin :math:`\epsilon \ge 0`.
        block_size: Anchor rows per block; ``None`` sizes a ``b x N`` tile to 16 MiB.
        row_range: ``(start, stop)``: only rows ``start:stop`` of ``z`` are anchors (all
            rows stay columns); ``None`` means every row.
        reference: ``(ref_z, ref_labels)``, shapes ``(M, D)`` and ``(M,)``: every row of
            ``z`` is an anchor, compared with the reference rows instead (none of them
            its self-pair); exclusive with ``row_range``. Gradients flow to both.

    Returns:
        ``(loss, valid)``, shape ``(A,)`` each (``A`` anchors, ``N`` by default);
        ``loss`` is 0 where the anchor has no positive (``valid`` False).

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
        >>> loss, valid = multi_similarity_tiled(z, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> loss.shape, bool(valid.all())
        (torch.Size([6]), True)
    """
    ref_z, labels, anchors, columns = join_reference(z, labels, row_range, reference)
    block_size = check_prepared(z, labels[: z.shape[0]], block_size, columns)
    check_positive("alpha", alpha)
    check_positive("beta", beta)
    check_positive("epsilon", epsilon, allow_zero=True)
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"base must be a real number; got {type(base).__name__}")
    options = (float(alpha), float(beta), float(base), float(epsilon))
    loss, valid = _MultiSimilarityTiledFunction.apply(  # type: ignore[no-untyped-call]
        z, ref_z, labels, options, block_size, anchors, columns
    )
    return loss, valid
