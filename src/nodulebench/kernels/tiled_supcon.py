r"""Tiled SupCon / NT-Xent: online log-sum-exp over column tiles, recompute backward.

With :math:`s_{ij} = z_i \cdot z_j / \tau`, :math:`A(i) = \{j \ne i\}` and
:math:`P(i) = \{p \in A(i) : y_p = y_i\}`, the per-anchor losses are

.. math::

    \ell^{out}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \frac{z_i \cdot (S_{y_i} - z_i)}{\tau\,|P(i)|},
    \qquad
    \ell^{in}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \operatorname{LSE}_{p \in P(i)} s_{ip} + \log |P(i)|,

where :math:`S_c = \sum_{j: y_j = c} z_j` is the class sum, so the positive term of
``"out"`` costs :math:`O(ND)`. Both log-sum-exps are accumulated online over column
tiles, with the self-pair set to :math:`-\infty` inside the tile. The forward pass keeps
only :math:`O(N)` per-row statistics; the backward pass recomputes each tile. Writing
:math:`G_{ij} = g_i\,(\partial \ell_i / \partial s_{ij})`, the similarity is symmetric, so

.. math::

    \frac{\partial L}{\partial z} = \frac{(G + G^\top)\, z}{\tau},

and the row part :math:`G z` and the column part :math:`G^\top z` are both accumulated
block by block, never holding :math:`G`. The ``"out"`` positive term contributes
:math:`-\frac{1}{\tau}\big(w_i (S_{y_i} - z_i) + W_{y_i} - w_i z_i\big)` with
:math:`w_i = g_i / |P(i)|` and the weighted class sums :math:`W_c = \sum_{y_j = c} w_j z_j`.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_choice, check_positive
from nodulebench.kernels._tiling import check_prepared, eager_under_compile, row_blocks

__all__ = ["supcon_tiled"]

_VARIANTS = ("out", "in")


def _class_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense class ids ``0..C-1`` per row and the size of each class."""
    _, class_id = torch.unique(labels, return_inverse=True)
    return class_id, torch.bincount(class_id)


def _mask_self(s: torch.Tensor, row0: int, col0: int) -> torch.Tensor:
    """Set the self-pairs of the tile at rows ``row0:`` x columns ``col0:`` to ``-inf``."""
    lo, hi = max(row0, col0), min(row0 + s.shape[0], col0 + s.shape[1])
    if lo < hi:
        idx = torch.arange(lo, hi, device=s.device)
        s[idx - row0, idx - col0] = float("-inf")
    return s


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _SupConTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, labels: torch.Tensor, temperature: float, variant: str,
        block_size: int, column_block_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        inv_tau = 1.0 / temperature
        class_id, class_size = _class_index(labels)
        num_pos = class_size[class_id] - 1
        valid = num_pos > 0
        lse = torch.full((n,), float("-inf"), dtype=z.dtype, device=z.device)
        lse_pos = torch.full_like(lse, float("-inf"))
        for r0, r1 in row_blocks(n, block_size):
            # Scaling the b x D rows by 1/tau is cheaper than scaling the b x N tile.
            z_rows, id_rows = z[r0:r1] * inv_tau, class_id[r0:r1]
            for c0, c1 in row_blocks(n, column_block_size):
                s = _mask_self(z_rows @ z[c0:c1].T, r0, c0)
                if variant == "in":
                    same = id_rows[:, None] == class_id[None, c0:c1]
                    # Online LSE over column tiles: combine the running and the tile LSE.
                    lse_pos[r0:r1] = torch.logaddexp(
                        lse_pos[r0:r1], torch.logsumexp(s.masked_fill(~same, -torch.inf), 1)
                    )
                lse[r0:r1] = torch.logaddexp(lse[r0:r1], torch.logsumexp(s, dim=1))
        if variant == "out":
            class_sum = torch.zeros(
                class_size.shape[0], z.shape[1], dtype=z.dtype, device=z.device
            ).index_add_(0, class_id, z)
            pos_term = (z * (class_sum[class_id] - z)).sum(dim=1) * inv_tau
            raw = lse - pos_term / num_pos.clamp(min=1).to(z.dtype)
        else:
            raw = lse - lse_pos + torch.log(num_pos.clamp(min=1).to(z.dtype))
        loss = torch.where(valid, raw, torch.zeros_like(raw))
        ctx.save_for_backward(z, class_id, lse, lse_pos, num_pos, valid)
        ctx.options = (inv_tau, variant, block_size, column_block_size, class_size.shape[0])
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, class_id, lse, lse_pos, num_pos, valid = ctx.saved_tensors
        inv_tau, variant, block_size, column_block_size, num_classes = ctx.options
        n = z.shape[0]
        g = torch.where(valid, grad_loss, torch.zeros_like(grad_loss))
        lse = _finite_or_zero(lse)
        lse_pos = _finite_or_zero(lse_pos)
        grad_z = torch.zeros_like(z)
        ones = torch.ones(n, 1, dtype=z.dtype, device=z.device)
        for r0, r1 in row_blocks(n, block_size):
            z_rows, g_rows = z[r0:r1], g[r0:r1, None]
            # [z_i / tau, -lse_i] . [z_j, 1] = s_ij - lse_i: the shift rides on the product.
            shifted_rows = torch.cat([z_rows * inv_tau, -lse[r0:r1, None]], dim=1)
            scaled_rows = z_rows * g_rows
            for c0, c1 in row_blocks(n, column_block_size):
                z_cols = z[c0:c1]
                shifted = _mask_self(shifted_rows @ torch.cat([z_cols, ones[c0:c1]], 1).T, r0, c0)
                if variant == "in":
                    same = class_id[r0:r1, None] == class_id[None, c0:c1]
                    # q_ij = exp(s_ij - lse_pos_i) on positives, from the shifted tile.
                    q = torch.exp(shifted + (lse - lse_pos)[r0:r1, None]).masked_fill_(~same, 0)
                # P_ij = softmax over A(i); G = g_i * (P [- Q for "in"]), never stored whole:
                # G z = g * (P z) and G^T z_rows = P^T (g * z_rows).
                tile = shifted.exp_()
                if variant == "in":
                    tile.sub_(q)
                grad_z[r0:r1].add_((tile @ z_cols) * (g_rows * inv_tau))
                grad_z[c0:c1].addmm_(tile.T, scaled_rows, alpha=inv_tau)
        if variant == "out":
            w = g / num_pos.clamp(min=1).to(z.dtype)
            sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
            class_sum = sums.index_add(0, class_id, z)
            weighted_sum = sums.index_add(0, class_id, w[:, None] * z)
            grad_z.sub_(
                (w[:, None] * (class_sum[class_id] - 2.0 * z) + weighted_sum[class_id])
                * inv_tau
            )
        return grad_z, None, None, None, None, None


@eager_under_compile
def supcon_tiled(
    z: torch.Tensor, labels: torch.Tensor, *, temperature: float, variant: str = "out",
    block_size: int | None = None, column_block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor SupCon loss in :math:`O(N D + b N)` memory, forward and backward.

    Works on *prepared* inputs: views already flattened sample-major, rows already
    normalized if the loss normalizes, dtype already float32 or float64. NT-Xent is this
    function with ``labels`` equal to the sample index of each row.

    Args:
        z: Embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        temperature: :math:`\tau > 0`.
        variant: ``"out"`` (mean of log-probabilities over positives) or ``"in"``
            (log of the mean probability); see the module docstring.
        block_size: Anchor rows per block ``b``; ``None`` sizes a ``b x N`` tile to
            16 MiB (float32).
        column_block_size: Columns per tile of the online log-sum-exp; ``None`` (default)
            uses one tile of all ``N`` columns, which is fastest while ``b x N`` fits.

    Returns:
        ``(loss, valid)``: ``loss`` of shape ``(N,)`` in ``z``'s dtype, exactly 0 where
        ``valid`` (shape ``(N,)``, bool) is False, i.e. for anchors without positives.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
        >>> loss, valid = supcon_tiled(z, torch.tensor([0, 0, 1, 1, 2, 3]), temperature=0.1)
        >>> valid.tolist()
        [True, True, True, True, False, False]
    """
    block_size = check_prepared(z, labels, block_size)
    check_positive("temperature", temperature)
    check_choice("variant", variant, _VARIANTS)
    if column_block_size is None:
        column_block_size = max(z.shape[0], 1)
    elif (
        isinstance(column_block_size, bool) or not isinstance(column_block_size, int)
        or column_block_size < 1
    ):
        raise ValueError(
            f"column_block_size must be a positive int or None; got {column_block_size!r}"
        )
    loss, valid = _SupConTiledFunction.apply(  # type: ignore[no-untyped-call]
        z, labels, float(temperature), variant, block_size, column_block_size
    )
    return loss, valid
