r"""Tiled multi-similarity loss (Wang et al. 2019) with recompute backward.

On unit rows, :math:`S_{ij} = z_i \cdot z_j`. Anchor :math:`i` keeps a positive :math:`p`
if :math:`S_{ip} - \epsilon < \max_{n \in \mathrm{Neg}(i)} S_{in}` and a negative :math:`n`
if :math:`S_{in} + \epsilon > \min_{p \in P(i)} S_{ip}`; then

.. math::

    \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{\text{kept } p} e^{-\alpha (S_{ip} - \lambda)}
        \Big) + \frac{1}{\beta} \log\Big(1 + \sum_{\text{kept } n} e^{\beta (S_{in} - \lambda)}
        \Big).

Both extremes and both sums are per-row reductions over a row block's ``(b, N)`` tile, so
the forward pass keeps four numbers per row. The mining masks are comparisons (no
gradient); the backward pass rebuilds them from the saved extremes, forms
:math:`W_{ij} = g_i\,\partial \ell_i / \partial S_{ij}` tile by tile and adds
:math:`(W + W^\top) z`.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_positive
from nodulebench.kernels._tiling import check_prepared, eager_under_compile, row_blocks, self_mask

__all__ = ["multi_similarity_tiled"]


def _kept_terms(
    s: torch.Tensor, labels: torch.Tensor, r0: int, r1: int, max_neg: torch.Tensor,
    min_pos: torch.Tensor, options: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp`` terms of the kept positives and kept negatives of a block (0 elsewhere)."""
    alpha, beta, base, epsilon = options
    same = labels[r0:r1, None] == labels[None, :]
    pos = same & ~self_mask(r0, r1, labels.shape[0], labels.device)
    keep_pos = pos & (s - epsilon < max_neg[:, None])
    keep_neg = ~same & (s + epsilon > min_pos[:, None])
    zero = torch.zeros_like(s)
    pos_terms = torch.where(keep_pos, torch.exp(-alpha * (s - base)), zero)
    neg_terms = torch.where(keep_neg, torch.exp(beta * (s - base)), zero)
    return pos_terms, neg_terms


class _MultiSimilarityTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, labels: torch.Tensor,
        options: tuple[float, float, float, float], block_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        alpha, beta = options[0], options[1]
        stats = torch.zeros(4, n, dtype=z.dtype, device=z.device)
        max_neg, min_pos, pos_sum, neg_sum = stats.unbind(0)
        valid = torch.zeros(n, dtype=torch.bool, device=z.device)
        for r0, r1 in row_blocks(n, block_size):
            s = z[r0:r1] @ z.T
            same = labels[r0:r1, None] == labels[None, :]
            pos = same & ~self_mask(r0, r1, n, z.device)
            max_neg[r0:r1] = s.masked_fill(same, float("-inf")).amax(dim=1)
            min_pos[r0:r1] = s.masked_fill(~pos, float("inf")).amin(dim=1)
            valid[r0:r1] = pos.any(dim=1)
            pos_terms, neg_terms = _kept_terms(
                s, labels, r0, r1, max_neg[r0:r1], min_pos[r0:r1], options
            )
            pos_sum[r0:r1] = pos_terms.sum(dim=1)
            neg_sum[r0:r1] = neg_terms.sum(dim=1)
        raw = torch.log1p(pos_sum) / alpha + torch.log1p(neg_sum) / beta
        loss = torch.where(valid, raw, torch.zeros_like(raw))
        ctx.save_for_backward(z, labels, stats, valid)
        ctx.options = (options, block_size)
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, stats, valid = ctx.saved_tensors
        options, block_size = ctx.options
        max_neg, min_pos, pos_sum, neg_sum = stats.unbind(0)
        g = torch.where(valid, grad_loss, torch.zeros_like(grad_loss))
        grad_z = torch.zeros_like(z)
        for r0, r1 in row_blocks(z.shape[0], block_size):
            z_rows = z[r0:r1]
            s = z_rows @ z.T
            pos_terms, neg_terms = _kept_terms(
                s, labels, r0, r1, max_neg[r0:r1], min_pos[r0:r1], options
            )
            # d/dS of (1/a) log(1 + sum e^{-a(S-l)}) is -e^{-a(S-l)} / (1 + sum), and
            # of (1/b) log(1 + sum e^{b(S-l)}) is e^{b(S-l)} / (1 + sum).
            weight = neg_terms.div_(1.0 + neg_sum[r0:r1, None])
            weight.sub_(pos_terms.div_(1.0 + pos_sum[r0:r1, None]))
            weight.mul_(g[r0:r1, None])
            grad_z[r0:r1].addmm_(weight, z)
            grad_z.addmm_(weight.T, z_rows)
        return grad_z, None, None, None


@eager_under_compile
def multi_similarity_tiled(
    z: torch.Tensor, labels: torch.Tensor, *, alpha: float = 2.0, beta: float = 50.0,
    base: float = 0.5, epsilon: float = 0.1, block_size: int | None = None,
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

    Returns:
        ``(loss, valid)``, shape ``(N,)`` each; ``loss`` is 0 where the anchor has no
        positive (``valid`` False).

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
        >>> loss, valid = multi_similarity_tiled(z, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> loss.shape, bool(valid.all())
        (torch.Size([6]), True)
    """
    block_size = check_prepared(z, labels, block_size)
    check_positive("alpha", alpha)
    check_positive("beta", beta)
    check_positive("epsilon", epsilon, allow_zero=True)
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"base must be a real number; got {type(base).__name__}")
    options = (float(alpha), float(beta), float(base), float(epsilon))
    loss, valid = _MultiSimilarityTiledFunction.apply(  # type: ignore[no-untyped-call]
        z, labels, options, block_size
    )
    return loss, valid
