r"""Tiled SupCon / NT-Xent: online log-sum-exp over symmetric tile pairs, recompute backward.

With :math:`s_{ij} = z_i \cdot z_j / \tau`, :math:`A(i) = \{j \ne i\}` and
:math:`P(i) = \{p \in A(i) : y_p = y_i\}`, the per-anchor losses are

.. math::

    \ell^{out}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \frac{z_i \cdot (S_{y_i} - z_i)}{\tau\,|P(i)|},
    \qquad
    \ell^{in}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \operatorname{LSE}_{p \in P(i)} s_{ip} + \log |P(i)|,

where :math:`S_c = \sum_{j: y_j = c} z_j` is the class sum, so the positive term of
``"out"`` costs :math:`O(ND)`. Since :math:`s` is symmetric, the kernel visits only the
square tiles :math:`(I, J)` with :math:`J \ge I` and uses each for the rows of both
blocks. Both log-sum-exps are accumulated online over the tiles, with the self-pair set
to :math:`-\infty` inside the diagonal tiles. The forward pass keeps only :math:`O(N)`
per-row statistics; the backward pass recomputes each tile. Writing
:math:`G_{ij} = g_i\,(\partial \ell_i / \partial s_{ij})`,

.. math::

    \frac{\partial L}{\partial z} = \frac{(G + G^\top)\, z}{\tau},

and a tile pair adds :math:`M z_J / \tau` to the rows of :math:`I` and
:math:`M^\top z_I / \tau` to those of :math:`J`, with :math:`M = G_{IJ} + G_{JI}^\top`:
the row and the column contributions, never holding :math:`G`. The ``"out"`` positive
term contributes :math:`-\frac{1}{\tau}\big(w_i (S_{y_i} - z_i) + W_{y_i} - w_i z_i\big)` with
:math:`w_i = g_i / |P(i)|` and the weighted class sums :math:`W_c = \sum_{y_j = c} w_j z_j`.

Correct-N-Contrast (:func:`cnc_tiled`) is the same engine with other sets: each row also
carries a prediction :math:`k_j`, :math:`P(i) = \{j: y_j = y_i, k_j \ne k_i\}` and
:math:`A(i) = P(i) \cup \{j: k_j = k_i, y_j \ne y_i\}`. Both masks are symmetric, so the
tiles are still shared, and the positive sum is the class sum minus the sum over the
anchor's cell :math:`(y_i, k_i)`; for SupCon the cell is the row itself.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_choice, check_positive
from nodulebench.kernels._dense import SUPCON_VARIANTS, unpack_pair_labels
from nodulebench.kernels._tiling import (
    TILE_EDGE,
    anchor_tiles,
    check_prepared,
    check_row_range,
    eager_under_compile,
)

__all__ = ["cnc_tiled", "supcon_tiled"]



def _class_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense class ids ``0..C-1`` per row and the size of each class."""
    _, class_id = torch.unique(labels, return_inverse=True)
    return class_id, torch.bincount(class_id)


class _Sets:
    """Who is a candidate and a positive of whom: classes, and cells for CnC.

    Without predictions (SupCon) the cell of a row is the row itself and only the
    self-pair is excluded from the candidates; with them (``pairs=True``, the labels
    are packed pair labels) the cell is ``(y, k)`` and a pair is a candidate iff it
    agrees in exactly one of class and prediction.
    """

    def __init__(self, labels: torch.Tensor, pairs: bool) -> None:
        self.predictions: torch.Tensor | None = None
        classes = labels
        if pairs:
            classes, self.predictions = unpack_pair_labels(labels)
        self.class_id, self.class_size = _class_index(classes)
        self.cell_id: torch.Tensor | None = None
        self.cell_size: torch.Tensor | None = None
        if pairs:
            self.cell_id, self.cell_size = _class_index(labels)

    def num_positives(self, a0: int, a1: int) -> torch.Tensor:
        own = 1 if self.cell_id is None or self.cell_size is None \
            else self.cell_size[self.cell_id[a0:a1]]
        return self.class_size[self.class_id[a0:a1]] - own

    def scores(self, z: torch.Tensor, inv_tau: float, r0: int, r1: int, c0: int,
               c1: int) -> torch.Tensor:
        """The tile of ``s``, ``-inf`` where the column is not a candidate of the row."""
        s = _mask_self((z[r0:r1] * inv_tau) @ z[c0:c1].T, r0, c0)
        if self.predictions is None:
            return s
        same_class = self.class_id[r0:r1, None] == self.class_id[None, c0:c1]
        same_prediction = self.predictions[r0:r1, None] == self.predictions[None, c0:c1]
        return s.masked_fill_(same_class == same_prediction, float("-inf"))

    def positive(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Same class (the self-pair and, for CnC, the own cell are ``-inf`` already)."""
        return self.class_id[r0:r1, None] == self.class_id[None, c0:c1]

    def sums(self, rows: torch.Tensor, weights: torch.Tensor | None, first: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of ``rows`` (rows ``first:`` of the batch): weighted class and cell sums.

        Returns ``(class, cell)``, each of shape ``(N, D)`` indexed by the batch's rows.
        """
        weighted = rows if weights is None else weights[:, None] * rows
        last = first + rows.shape[0]
        num_classes = self.class_size.shape[0]
        by_class = rows.new_zeros(num_classes, rows.shape[1]).index_add_(
            0, self.class_id[first:last], weighted)[self.class_id]
        if self.cell_id is None or self.cell_size is None:
            by_cell = torch.zeros_like(by_class)
            by_cell[first:last] = weighted
            return by_class, by_cell
        by_cell = rows.new_zeros(self.cell_size.shape[0], rows.shape[1]).index_add_(
            0, self.cell_id[first:last], weighted)[self.cell_id]
        return by_class, by_cell


def _mask_self(s: torch.Tensor, row0: int, col0: int) -> torch.Tensor:
    """Set the self-pairs of the tile at rows ``row0:`` x columns ``col0:`` to ``-inf``."""
    lo, hi = max(row0, col0), min(row0 + s.shape[0], col0 + s.shape[1])
    if lo < hi:
        idx = torch.arange(lo, hi, device=s.device)
        s[idx - row0, idx - col0] = float("-inf")
    return s


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _fold_lse(running: torch.Tensor, tile: torch.Tensor, dim: int) -> None:
    """Online log-sum-exp: fold the tile's LSE along ``dim`` into ``running`` in place."""
    running.copy_(torch.logaddexp(running, torch.logsumexp(tile, dim=dim)))


class _SupConTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, labels: torch.Tensor, temperature: float, variant: str,
        block_size: int, row_range: tuple[int, int], pairs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        # Anchors are rows a0:a1 of z; every row of z is a column (all of them by default).
        a0, a1 = row_range
        symmetric = (a0, a1) == (0, n)
        inv_tau = 1.0 / temperature
        sets = _Sets(labels, pairs)
        num_pos = sets.num_positives(a0, a1)
        valid = num_pos > 0
        lse = torch.full((a1 - a0,), float("-inf"), dtype=z.dtype, device=z.device)
        lse_pos = torch.full_like(lse, float("-inf"))
        # s is symmetric: when every row is an anchor, the tile of row block I x column
        # block J is the transpose of J x I, so one product serves the row LSEs of I
        # (along dim 1) and of J (dim 0).
        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range):
            s = sets.scores(z, inv_tau, r0, r1, c0, c1)
            mirrored = symmetric and c0 != r0
            _fold_lse(lse[r0 - a0 : r1 - a0], s, 1)
            if mirrored:
                _fold_lse(lse[c0:c1], s, 0)
            if variant == "in":
                s_pos = s.masked_fill_(~sets.positive(r0, r1, c0, c1), float("-inf"))
                _fold_lse(lse_pos[r0 - a0 : r1 - a0], s_pos, 1)
                if mirrored:
                    _fold_lse(lse_pos[c0:c1], s_pos, 0)
        if variant == "out":
            anchors = z[a0:a1]
            by_class, by_cell = sets.sums(z, None, 0)
            positive_sum = (by_class - by_cell)[a0:a1]
            pos_term = (anchors * positive_sum).sum(dim=1) * inv_tau
            raw = lse - pos_term / num_pos.clamp(min=1).to(z.dtype)
        else:
            raw = lse - lse_pos + torch.log(num_pos.clamp(min=1).to(z.dtype))
        loss = torch.where(valid, raw, torch.zeros_like(raw))
        ctx.save_for_backward(z, labels, lse, lse_pos, num_pos, valid)
        ctx.options = (inv_tau, variant, block_size, row_range, pairs)
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, lse, lse_pos, num_pos, valid = ctx.saved_tensors
        inv_tau, variant, block_size, row_range, pairs = ctx.options
        sets = _Sets(labels, pairs)
        n = z.shape[0]
        a0, a1 = row_range
        symmetric = (a0, a1) == (0, n)
        g = torch.where(valid, grad_loss, torch.zeros_like(grad_loss))
        lse = _finite_or_zero(lse)
        lse_pos = _finite_or_zero(lse_pos)
        grad_z = torch.zeros_like(z)

        def weights(s: torch.Tensor, rows: slice, cols: slice, same: torch.Tensor | None,
                    dim: int) -> torch.Tensor:
            """G of the anchors along ``dim``: g_i (P_ij [- Q_ij]), oriented like ``s``."""
            shape = (-1, 1) if dim == 1 else (1, -1)
            anchors = slice(rows.start - a0, rows.stop - a0) if dim == 1 else cols
            tile = torch.exp(s - lse[anchors].view(shape))
            if same is not None:
                tile.sub_(torch.exp(s - lse_pos[anchors].view(shape)).masked_fill_(~same, 0.0))
            return tile.mul_(g[anchors].view(shape))

        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range):
            rows, cols = slice(r0, r1), slice(c0, c1)
            s = sets.scores(z, inv_tau, r0, r1, c0, c1)
            same = sets.positive(r0, r1, c0, c1) if variant == "in" else None
            # M_ij = G_ij + G_ji couples row i and column j both ways; dz = M z / tau.
            # Without the mirror (anchor subsets), M = G of the tile's anchors only.
            m = weights(s, rows, cols, same, 1)
            if symmetric and c0 == r0:
                grad_z[rows].addmm_(m + m.T, z[rows], alpha=inv_tau)
                continue
            if symmetric:
                m.add_(weights(s, rows, cols, same, 0))
            grad_z[rows].addmm_(m, z[cols], alpha=inv_tau)
            grad_z[cols].addmm_(m.T, z[rows], alpha=inv_tau)
        if variant == "out":
            # d/dz of sum_i w_i z_i . (S_{y_i} - C_i) over the anchors i (C_i: the sum over
            # i's cell): every row j gets the anchors' weighted class sum minus their
            # weighted cell sum at j; anchor rows also w_i (S_{y_i} - C_i).
            w = g / num_pos.clamp(min=1).to(z.dtype)
            by_class, by_cell = sets.sums(z, None, 0)
            weighted_class, weighted_cell = sets.sums(z[a0:a1], w, a0)
            grad_z.sub_((weighted_class - weighted_cell) * inv_tau)
            grad_z[a0:a1].sub_(w[:, None] * (by_class - by_cell)[a0:a1] * inv_tau)
        return grad_z, None, None, None, None, None, None


def _run(z: torch.Tensor, labels: torch.Tensor, temperature: float, variant: str,
         block_size: int | None, row_range: tuple[int, int] | None, pairs: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    edge = check_prepared(z, labels, block_size)
    check_positive("temperature", temperature)
    check_choice("variant", variant, SUPCON_VARIANTS)
    if block_size is None:
        edge = max(1, min(z.shape[0], TILE_EDGE))
    loss, valid = _SupConTiledFunction.apply(  # type: ignore[no-untyped-call]
        z, labels, float(temperature), variant, edge,
        check_row_range(row_range, z.shape[0]), pairs,
    )
    return loss, valid


@eager_under_compile
def supcon_tiled(
    z: torch.Tensor, labels: torch.Tensor, *, temperature: float, variant: str = "out",
    block_size: int | None = None, row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor SupCon loss in :math:`O(N D + b^2)` memory, forward and backward.

    Works on *prepared* inputs: views already flattened sample-major, rows already
    normalized if the loss normalizes, dtype already float32 or float64. NT-Xent is this
    function with ``labels`` equal to the sample index of each row.

    Args:
        z: Embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        temperature: :math:`\tau > 0`.
        variant: ``"out"`` (mean of log-probabilities over positives) or ``"in"``
            (log of the mean probability); see the module docstring.
        block_size: Edge ``b`` of the square ``b x b`` similarity tiles; ``None`` picks
            ``min(N, 1024)`` (a 4 MiB float32 tile).
        row_range: ``(start, stop)``: only rows ``start:stop`` of ``z`` are anchors (all
            rows stay columns; a distributed loss passes the gathered batch and its own
            rows); ``None`` means every row.

    Returns:
        ``(loss, valid)``: ``loss`` of shape ``(A,)`` (``A`` anchors, ``N`` by default)
        in ``z``'s dtype, exactly 0 where ``valid`` (shape ``(A,)``, bool) is False,
        i.e. for anchors without positives.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
        >>> loss, valid = supcon_tiled(z, torch.tensor([0, 0, 1, 1, 2, 3]), temperature=0.1)
        >>> valid.tolist()
        [True, True, True, True, False, False]
    """
    return _run(z, labels, temperature, variant, block_size, row_range, pairs=False)


@eager_under_compile
def cnc_tiled(
    z: torch.Tensor, labels: torch.Tensor, *, temperature: float, variant: str = "out",
    block_size: int | None = None, row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor Correct-N-Contrast loss in :math:`O(N D + b^2)` memory.

    :func:`supcon_tiled` with Correct-N-Contrast's sets (see the module docstring):
    ``labels`` are pair labels (``nodulebench.kernels._dense.pack_pair_labels`` of the
    class labels and a reference model's predictions). Arguments and returns as there;
    an anchor is valid iff some row has its class and another prediction.

    Example:
        >>> from nodulebench.kernels._dense import pack_pair_labels
        >>> z = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
        >>> codes = pack_pair_labels(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
        >>> loss, valid = cnc_tiled(z, codes, temperature=0.1)
        >>> valid.tolist()
        [True, True, False, False]
    """
    return _run(z, labels, temperature, variant, block_size, row_range, pairs=True)
