r"""Tiled SupCon / NT-Xent: online log-sum-exp over symmetric tile pairs, recompute backward.

With :math:`s_{ij} = z_i \cdot z_j / \tau`, :math:`A(i) = \{j \ne i\}` and
:math:`P(i) = \{p \in A(i) : y_p = y_i\}`, the per-anchor losses are

.. math::

    \ell^{out}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \frac{1}{|P(i)|} \sum_{p \in P(i)} s_{ip},
    \qquad
    \ell^{in}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
        - \operatorname{LSE}_{p \in P(i)} s_{ip} + \log |P(i)|,

Since :math:`s` is symmetric, the kernel visits only the square tiles :math:`(I, J)` with
:math:`J \ge I` and uses each for the rows of both blocks. Both log-sum-exps, and the
positive sum of ``"out"``, are accumulated online over the tiles, with the self-pair set
to :math:`-\infty` (0 in the positive sum) inside the diagonal tiles. The positive sum is
taken from the same tile entries as the log-sum-exp, not from class sums
(:math:`z_i \cdot (S_{y_i} - z_i)` cancels catastrophically on large unnormalized rows),
so the rounding error is relative to the logits, and a loss that is exactly 0 (one
positive, no negative) comes out as 0. The forward pass keeps only :math:`O(N)`
per-row statistics; the backward pass recomputes each tile. Writing
:math:`G_{ij} = g_i\,(\partial \ell_i / \partial s_{ij})`,

.. math::

    \frac{\partial L}{\partial z} = \frac{(G + G^\top)\, z}{\tau},

and a tile pair adds :math:`M z_J / \tau` to the rows of :math:`I` and
:math:`M^\top z_I / \tau` to those of :math:`J`, with :math:`M = G_{IJ} + G_{JI}^\top`:
the row and the column contributions, never holding :math:`G`. For ``"out"``,
:math:`G_{ij} = g_i\,(e^{s_{ij} - \mathrm{LSE}_i} - [j \in P(i)] / |P(i)|)`.

With a reference set the columns are its rows instead: :math:`A(i)` is every reference
row, :math:`P(i)` those of the anchor's class, and each tile pairs an anchor block with a
reference block (no mirror, no self-pair); the column contributions are then the
gradient of the reference rows.

Correct-N-Contrast (:func:`cnc_tiled`) is the same engine with other sets: each row also
carries a prediction :math:`k_j`, :math:`P(i) = \{j: y_j = y_i, k_j \ne k_i\}` and
:math:`A(i) = P(i) \cup \{j: k_j = k_i, y_j \ne y_i\}`. Both masks are symmetric, so the
tiles are still shared.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_choice, check_positive
from nodulebench.kernels._dense import SUPCON_VARIANTS, unpack_pair_labels
from nodulebench.kernels._tiling import (
    TILE_EDGE,
    ShiftedLse,
    anchor_tiles,
    check_prepared,
    eager_under_compile,
    has_self_pairs,
    join_reference,
    reference_rows,
    split_rows,
    stack_rows,
)

__all__ = ["cnc_tiled", "supcon_tiled"]


def _class_index(
    labels: torch.Tensor, columns: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense class ids ``0..C-1`` per row and how many of the ``columns`` rows hold each."""
    classes, class_id = torch.unique(labels, return_inverse=True)
    return class_id, torch.bincount(class_id[columns[0] : columns[1]], minlength=classes.shape[0])


class _Sets:
    """Who is a candidate and a positive of whom: SupCon's sets, or CnC's.

    Without predictions (SupCon) every other row is a candidate and those of the same
    class are positives. With them (``pairs=True``: the labels are packed pair labels of
    a class and a prediction) a pair is a candidate iff it agrees in exactly one of the
    two, and a positive iff it agrees in the class. Sizes count the ``columns`` rows.
    """

    def __init__(
        self, labels: torch.Tensor, pairs: bool, columns: tuple[int, int], self_pairs: bool
    ) -> None:
        self.predictions: torch.Tensor | None = None
        classes = labels
        if pairs:
            classes, self.predictions = unpack_pair_labels(labels)
        self.class_id, self.class_size = _class_index(classes, columns)
        # The columns that share an anchor's class and are no positive: itself (unless
        # the columns are a reference set), for CnC its cell (same class and prediction).
        self.cell_size = self.class_size.new_full((labels.shape[0], 1), int(self_pairs))
        if pairs:
            cell_id, cell_size = _class_index(labels, columns)
            self.cell_size = cell_size[cell_id][:, None]

    def num_positives(self, a0: int, a1: int) -> torch.Tensor:
        """``|P(i)|`` of the anchors ``a0:a1``."""
        return self.class_size[self.class_id[a0:a1]] - self.cell_size[a0:a1, 0]

    def scores(
        self, z: torch.Tensor, inv_tau: float, r0: int, r1: int, c0: int, c1: int
    ) -> torch.Tensor:
        """The tile of ``s``, ``-inf`` where the column is not a candidate of the row."""
        s = _mask_self((z[r0:r1] * inv_tau) @ z[c0:c1].T, r0, c0)
        if self.predictions is None:
            return s
        return s.masked_fill_(
            self._same_class(r0, r1, c0, c1) == self._same_prediction(r0, r1, c0, c1), float("-inf")
        )

    def positive(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Positive pairs of the tile (for SupCon the self-pairs too: callers mask them)."""
        same = self._same_class(r0, r1, c0, c1)
        if self.predictions is None:
            return same
        return same & ~self._same_prediction(r0, r1, c0, c1)

    def _same_class(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        return self.class_id[r0:r1, None] == self.class_id[None, c0:c1]

    def _same_prediction(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        assert self.predictions is not None  # only called for CnC
        return self.predictions[r0:r1, None] == self.predictions[None, c0:c1]


def _mask_self(
    s: torch.Tensor, row0: int, col0: int, value: float | bool = float("-inf")
) -> torch.Tensor:
    """Set the self-pairs of the tile at rows ``row0:`` x columns ``col0:`` to ``value``."""
    lo, hi = max(row0, col0), min(row0 + s.shape[0], col0 + s.shape[1])
    if lo < hi:
        idx = torch.arange(lo, hi, device=s.device)
        s[idx - row0, idx - col0] = value
    return s


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _SupConTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        ref_z: torch.Tensor | None,
        labels: torch.Tensor,
        temperature: float,
        variant: str,
        block_size: int,
        row_range: tuple[int, int],
        columns: tuple[int, int],
        pairs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = stack_rows(z, ref_z)
        n = z.shape[0]
        # Anchors are rows a0:a1 of z, the columns rows `columns` (all rows by default).
        a0, a1 = row_range
        symmetric = (a0, a1) == columns == (0, n)
        inv_tau = 1.0 / temperature
        sets = _Sets(labels, pairs, columns, has_self_pairs(row_range, columns))
        num_pos = sets.num_positives(a0, a1)
        valid = num_pos > 0
        stats = ShiftedLse(a1 - a0, z, positive_sum=variant == "out")
        stats_pos = ShiftedLse(a1 - a0, z)
        # s is symmetric: when every row is an anchor, the tile of row block I x column
        # block J is the transpose of J x I, so one product serves the row LSEs of I
        # (along dim 1) and of J (dim 0).
        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range, columns):
            s = sets.scores(z, inv_tau, r0, r1, c0, c1)
            mirrored = symmetric and c0 != r0
            same = sets.positive(r0, r1, c0, c1)
            rows, cols = slice(r0 - a0, r1 - a0), slice(c0, c1)
            if variant == "out":
                same = _mask_self(same, r0, c0, False)
                stats.fold(rows, s, 1, same)
                if mirrored:
                    stats.fold(cols, s, 0, same)
            else:
                stats.fold(rows, s, 1)
                if mirrored:
                    stats.fold(cols, s, 0)
                s_pos = s.masked_fill_(~same, float("-inf"))
                stats_pos.fold(rows, s_pos, 1)
                if mirrored:
                    stats_pos.fold(cols, s_pos, 0)
        count = num_pos.clamp(min=1).to(z.dtype)
        if variant == "out":
            assert stats.positive is not None
            raw = stats.shifted() - stats.positive / count
        else:
            gap = _finite_or_zero(stats.peak - stats_pos.peak)
            raw = gap + stats.shifted() - stats_pos.shifted() + torch.log(count)
        loss = torch.where(valid, raw, torch.zeros_like(raw))
        # The backward pass forms exp((s - peak) - shifted), not exp(s - lse): with
        # logits of 1e9 the sum peak + shifted would round away what the shift keeps.
        ctx.save_for_backward(
            z,
            labels,
            _finite_or_zero(stats.peak),
            stats.shifted(),
            _finite_or_zero(stats_pos.peak),
            stats_pos.shifted(),
            num_pos,
            valid,
        )
        ctx.options = (
            inv_tau,
            variant,
            block_size,
            row_range,
            columns,
            pairs,
            reference_rows(ref_z),
        )
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, peak, shifted, peak_pos, shifted_pos, num_pos, valid = ctx.saved_tensors
        inv_tau, variant, block_size, row_range, columns, pairs, ref_rows = ctx.options
        sets = _Sets(labels, pairs, columns, has_self_pairs(row_range, columns))
        n = z.shape[0]
        a0, a1 = row_range
        symmetric = (a0, a1) == columns == (0, n)
        g = torch.where(valid, grad_loss, torch.zeros_like(grad_loss))
        # "out": each positive's share of the mean positive logit.
        pos_share = g / num_pos.clamp(min=1).to(z.dtype)
        grad_z = torch.zeros_like(z)

        def weights(
            s: torch.Tensor, rows: slice, cols: slice, same: torch.Tensor, dim: int
        ) -> torch.Tensor:
            """G of the anchors along ``dim``, oriented like ``s`` ("out": softmax part only)."""
            shape = (-1, 1) if dim == 1 else (1, -1)
            anchors = slice(rows.start - a0, rows.stop - a0) if dim == 1 else cols
            tile = torch.exp((s - peak[anchors].view(shape)) - shifted[anchors].view(shape))
            if variant == "in":
                pos = (s - peak_pos[anchors].view(shape)) - shifted_pos[anchors].view(shape)
                tile.sub_(torch.exp(pos).masked_fill_(~same, 0.0))
            return tile.mul_(g[anchors].view(shape))

        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range, columns):
            rows, cols = slice(r0, r1), slice(c0, c1)
            s = sets.scores(z, inv_tau, r0, r1, c0, c1)
            same = sets.positive(r0, r1, c0, c1)
            # M_ij = G_ij + G_ji couples row i and column j both ways; dz = M z / tau.
            # Without the mirror (anchor subsets), M = G of the tile's anchors only.
            m = weights(s, rows, cols, same, 1)
            if symmetric and c0 == r0:
                m = m + m.T
            elif symmetric:
                m.add_(weights(s, rows, cols, same, 0))
            if variant == "out":
                # The positive part of M, -(w_i + w_j) on the positive pairs (w_j = 0 for a
                # column that is not an anchor of this call), subtracted once per tile.
                share = pos_share[r0 - a0 : r1 - a0, None]
                if symmetric:
                    share = share + pos_share[None, c0:c1]
                m.sub_(_mask_self(same, r0, c0, False) * share)
            if symmetric and c0 == r0:
                grad_z[rows].addmm_(m, z[rows], alpha=inv_tau)
                continue
            grad_z[rows].addmm_(m, z[cols], alpha=inv_tau)
            grad_z[cols].addmm_(m.T, z[rows], alpha=inv_tau)
        return (*split_rows(grad_z, ref_rows), None, None, None, None, None, None, None)


def _run(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    variant: str,
    block_size: int | None,
    row_range: tuple[int, int] | None,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    pairs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    ref_z, labels, anchors, columns = join_reference(z, labels, row_range, reference)
    edge = check_prepared(z, labels[: z.shape[0]], block_size)
    check_positive("temperature", temperature)
    check_choice("variant", variant, SUPCON_VARIANTS)
    if block_size is None:
        # Square tiles, as wide as the larger of the two sets allows (a small reference
        # set must not shrink the anchor blocks).
        edge = max(1, min(max(anchors[1] - anchors[0], columns[1] - columns[0]), TILE_EDGE))
    loss, valid = _SupConTiledFunction.apply(  # type: ignore[no-untyped-call]
        z,
        ref_z,
        labels,
        float(temperature),
        variant,
        edge,
        anchors,
        columns,
        pairs,
    )
    return loss, valid


@eager_under_compile
def supcon_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
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
        reference: ``(ref_z, ref_labels)``, shapes ``(M, D)`` and ``(M,)``: every row of
            ``z`` is an anchor and the candidates are the reference rows instead
            (none of them an anchor's self-pair); exclusive with ``row_range``.
            Gradients flow to ``z`` and ``ref_z``.

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
    return _run(z, labels, temperature, variant, block_size, row_range, reference, pairs=False)


@eager_under_compile
def cnc_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor Correct-N-Contrast loss in :math:`O(N D + b^2)` memory.

    :func:`supcon_tiled` with Correct-N-Contrast's sets (see the module docstring):
    ``labels`` are pair labels (``nodulebench.kernels._dense.pack_pair_labels`` of the
    class labels and a reference model's predictions; ``reference`` carries pair labels
    too). Arguments and returns as there; an anchor is valid iff some column has its
    class and another prediction.

    Example:
        >>> from nodulebench.kernels._dense import pack_pair_labels
        >>> z = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
        >>> codes = pack_pair_labels(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
        >>> loss, valid = cnc_tiled(z, codes, temperature=0.1)
        >>> valid.tolist()
        [True, True, False, False]
    """
    return _run(z, labels, temperature, variant, block_size, row_range, reference, pairs=True)
