r"""Tiled distance-based losses: contrastive, batch-hard and batch-all triplet.

Each kernel walks over blocks of anchor rows, builds the ``(b, N)`` distance tile from the
row norms and one matrix product, and keeps only :math:`O(N)` per-row results. The
backward pass recomputes the tiles (contrastive, batch-all) or, for batch-hard, touches
only the two pairs per anchor whose indices the forward pass saved.

Per anchor :math:`i`, with :math:`d_{ij}` the distance, :math:`P(i)` the positives and
:math:`\mathrm{Neg}(i)` the negatives:

.. math::

    \ell^{contrastive}_i &= \frac{1}{N-1} \sum_{j \ne i}
        \begin{cases} \tfrac12 d_{ij}^2 & y_j = y_i \\
        \tfrac12 \max(0, m - d_{ij})^2 & y_j \ne y_i \end{cases} \\
    \ell^{hard}_i &= \max\big(0, \max_{p \in P(i)} d_{ip} - \min_{n \in \mathrm{Neg}(i)} d_{in}
        + m\big) \\
    S_i &= \sum_{p \in P(i)} \sum_{n \in \mathrm{Neg}(i)} \max(0, d_{ip} - d_{in} + m)
        = \sum_{p \in P(i)} \Big(k_{ip}\,(d_{ip} + m) - \sum_{r \le k_{ip}} e_{i(r)}\Big),

where :math:`e_{i(1)} \le e_{i(2)} \le \dots` are anchor :math:`i`'s negative distances
sorted once and :math:`k_{ip} = \#\{n : d_{in} < d_{ip} + m\}` comes from a binary search,
so batch-all costs :math:`O(N^2 \log N)` time instead of the :math:`O(N^3)` enumeration.
With a reference set of :math:`M` rows the columns :math:`j` run over its rows (none of
them the anchor itself), and the contrastive mean is over those :math:`M`.
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench._validation import check_positive
from nodulebench.kernels._tiling import (
    TILE_EDGE,
    TILE_ELEMENTS,
    anchor_tiles,
    check_distance,
    check_prepared,
    distance_tile,
    eager_under_compile,
    has_self_pairs,
    join_reference,
    reference_rows,
    row_blocks,
    scatter_distance_grad,
    scatter_pair_grad,
    self_mask,
    split_rows,
    stack_rows,
)

__all__ = ["contrastive_tiled", "triplet_all_tiled", "triplet_hard_tiled"]


def _cosine_ready(z: torch.Tensor | None, distance: str) -> torch.Tensor | None:
    # Cosine distance needs unit rows; normalizing under autograd keeps the kernels simple.
    if z is None or distance != "cosine":
        return z
    return torch.nn.functional.normalize(z, dim=1)


def _masks(
    labels: torch.Tensor, r0: int, r1: int, columns: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive (same label, not self) and negative (other label) masks of a row block."""
    k0, k1 = columns
    same = labels[r0:r1, None] == labels[None, k0:k1]
    pos = same & ~self_mask(r0, r1, k1, labels.device, k0)
    return pos, ~same


def _column_rows(
    z: torch.Tensor, sq: torch.Tensor, columns: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The column rows of ``z`` and their squared norms."""
    return z[columns[0] : columns[1]], sq[columns[0] : columns[1]]


# ---------------------------------------------------------------- contrastive (Hadsell)


def _contrastive_tile(
    z: torch.Tensor,
    labels: torch.Tensor,
    sq: torch.Tensor,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances, masks (same label / other label, self excluded) of a tile."""
    d = distance_tile(z[r0:r1], z[c0:c1], sq[r0:r1], sq[c0:c1], "euclidean")
    same = labels[r0:r1, None] == labels[None, c0:c1]
    holds_self_pairs = r0 < c1 and c0 < r1
    pos = same & ~self_mask(r0, r1, c1, labels.device)[:, c0:c1] if holds_self_pairs else same
    return d, pos, ~same, (margin - d).clamp(min=0.0)


class _ContrastiveTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        ref_z: torch.Tensor | None,
        labels: torch.Tensor,
        margin: float,
        block_size: int,
        row_range: tuple[int, int],
        columns: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = stack_rows(z, ref_z)
        n = z.shape[0]
        a0, a1 = row_range  # anchors are rows a0:a1, the columns rows `columns`
        symmetric = (a0, a1) == columns == (0, n)
        others = _others(row_range, columns)
        sq = (z * z).sum(dim=1)
        total = torch.zeros(a1 - a0, dtype=z.dtype, device=z.device)
        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range, columns):
            d, pos, neg, hinge = _contrastive_tile(z, labels, sq, r0, r1, c0, c1, margin)
            cost = torch.where(pos, d * d, torch.zeros_like(d))
            cost += torch.where(neg, hinge.square_(), 0.0)
            total[r0 - a0 : r1 - a0] += cost.sum(dim=1)
            if symmetric and c0 != r0:
                total[c0:c1] += cost.sum(dim=0)
        loss = total * (0.5 / max(others, 1))
        valid = torch.full((a1 - a0,), others >= 1, dtype=torch.bool, device=z.device)
        ctx.save_for_backward(z, labels, sq)
        ctx.options = (margin, block_size, row_range, columns, reference_rows(ref_z))
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, sq = ctx.saved_tensors
        margin, block_size, row_range, columns, ref_rows = ctx.options
        n = z.shape[0]
        a0, a1 = row_range
        symmetric = (a0, a1) == columns == (0, n)
        others = _others(row_range, columns)
        grad_z = torch.zeros_like(z)
        if others < 1:
            return (*split_rows(grad_z, ref_rows), None, None, None, None, None)
        g = grad_loss / others
        for r0, r1, c0, c1 in anchor_tiles(n, block_size, row_range, columns):
            d, pos, neg, hinge = _contrastive_tile(z, labels, sq, r0, r1, c0, c1, margin)
            # dc/dd: d for positives, -max(0, m - d) for negatives, 0 on the diagonal;
            # an off-diagonal tile of the triangle carries the pair for both its anchors.
            weight = torch.where(pos, d, torch.zeros_like(d))
            weight -= torch.where(neg, hinge, 0.0)
            g_rows = g[r0 - a0 : r1 - a0, None]
            weight.mul_(g_rows + g[None, c0:c1] if symmetric and c0 != r0 else g_rows)
            scatter_distance_grad(weight, d, z, slice(r0, r1), slice(c0, c1), "euclidean", grad_z)
        return (*split_rows(grad_z, ref_rows), None, None, None, None, None)


def _others(anchors: tuple[int, int], columns: tuple[int, int]) -> int:
    """How many columns each anchor is compared with: all but its self-pair, if any."""
    return columns[1] - columns[0] - int(has_self_pairs(anchors, columns))


@eager_under_compile
def contrastive_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor Hadsell contrastive loss (Euclidean) in :math:`O(N D + b^2)` memory.

    Args:
        z: Prepared embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        margin: :math:`m \ge 0`, the distance beyond which negatives cost nothing (0: they
            never cost anything, the pull term alone).
        block_size: Edge ``b`` of the square distance tiles (the cost is symmetric, so
            each tile serves both its rows and its columns); ``None`` picks
            ``min(N, 1024)``.
        row_range: ``(start, stop)``: only rows ``start:stop`` of ``z`` are anchors (all
            rows stay columns; shapes ``(N,)`` below become ``(stop - start,)``);
            ``None`` means every row.
        reference: ``(ref_z, ref_labels)``, shapes ``(M, D)`` and ``(M,)``: every row of
            ``z`` is an anchor, compared with the reference rows instead (none of them
            its self-pair); exclusive with ``row_range``. Gradients flow to both.

    Returns:
        ``(loss, valid)``, both of shape ``(N,)``: the mean pair cost of each anchor over
        the other ``N - 1`` rows (the ``M`` reference rows), and ``valid`` (all True iff
        that count is at least 1).

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [0.0, 0.5], [3.0, 0.0]], dtype=torch.float64)
        >>> contrastive_tiled(z, torch.tensor([0, 0, 1]), margin=1.0)[0]
        tensor([0.0625, 0.0625, 0.0000], dtype=torch.float64)
    """
    ref_z, labels, anchors, columns = join_reference(z, labels, row_range, reference)
    edge = check_prepared(z, labels[: z.shape[0]], block_size)
    check_positive("margin", margin, allow_zero=True)
    if block_size is None:
        edge = max(1, min(max(anchors[1] - anchors[0], columns[1] - columns[0]), TILE_EDGE))
    loss, valid = _ContrastiveTiledFunction.apply(  # type: ignore[no-untyped-call]
        z, ref_z, labels, float(margin), edge, anchors, columns
    )
    return loss, valid


# ---------------------------------------------------------------- batch-hard triplet


def _tied_extremes(
    d: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a tile's farthest positives and closest negatives, every tied one."""
    pos_d = d.masked_fill(~pos, float("-inf"))
    neg_d = d.masked_fill(~neg, float("inf"))
    at_pos = pos & (pos_d == pos_d.amax(dim=1, keepdim=True))
    at_neg = neg & (neg_d == neg_d.amin(dim=1, keepdim=True))
    return at_pos, at_neg


class _TripletHardTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        ref_z: torch.Tensor | None,
        labels: torch.Tensor,
        margin: float,
        distance: str,
        block_size: int,
        row_range: tuple[int, int],
        columns: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = stack_rows(z, ref_z)
        a0, a1 = row_range  # anchors are rows a0:a1, the columns rows `columns`
        sq = (z * z).sum(dim=1)
        z_cols, sq_cols = _column_rows(z, sq, columns)
        hardest_pos = torch.zeros(a1 - a0, dtype=torch.int64, device=z.device)
        hardest_neg = torch.zeros_like(hardest_pos)
        tied = torch.zeros(a1 - a0, dtype=torch.bool, device=z.device)
        raw = torch.zeros(a1 - a0, dtype=z.dtype, device=z.device)
        valid = torch.zeros(a1 - a0, dtype=torch.bool, device=z.device)
        for r0, r1 in row_blocks(a1, block_size, a0):
            k0, k1 = r0 - a0, r1 - a0
            d = distance_tile(z[r0:r1], z_cols, sq[r0:r1], sq_cols, distance)
            pos, neg = _masks(labels, r0, r1, columns)
            pos_d = d.masked_fill(~pos, float("-inf"))
            d_pos, first_pos = pos_d.max(dim=1)
            neg_d = d.masked_fill_(~neg, float("inf"))
            d_neg, first_neg = neg_d.min(dim=1)
            hardest_pos[k0:k1] = first_pos + columns[0]
            hardest_neg[k0:k1] = first_neg + columns[0]
            valid[k0:k1] = pos.any(dim=1) & neg.any(dim=1)
            # A tie: the extreme is still there once its first occurrence is removed.
            second_pos = pos_d.scatter_(1, first_pos[:, None], float("-inf")).amax(dim=1)
            second_neg = neg_d.scatter_(1, first_neg[:, None], float("inf")).amin(dim=1)
            tied[k0:k1] = valid[k0:k1] & ((second_pos == d_pos) | (second_neg == d_neg))
            raw[k0:k1] = torch.where(valid[k0:k1], d_pos - d_neg + margin, 0.0)
        loss = torch.relu(raw)
        ctx.save_for_backward(z, labels, sq, hardest_pos, hardest_neg, tied, raw, valid)
        ctx.options = (distance, block_size, row_range, columns, reference_rows(ref_z))
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(
        ctx: Any, grad_loss: torch.Tensor, _grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, sq, hardest_pos, hardest_neg, tied, raw, valid = ctx.saved_tensors
        distance, block_size, (a0, a1), columns, ref_rows = ctx.options
        # relu passes the gradient where its input is > 0, as torch.relu does.
        g = torch.where(valid & (raw > 0), grad_loss, torch.zeros_like(grad_loss))
        anchors = torch.arange(a0, a1, device=z.device)
        grad_z = torch.zeros_like(z)
        # An anchor with one farthest positive and one closest negative: those two pairs.
        single = torch.where(tied, torch.zeros_like(g), g)
        scatter_pair_grad(single, z, anchors, hardest_pos, distance, grad_z)
        scatter_pair_grad(-single, z, anchors, hardest_neg, distance, grad_z)
        # With ties, the gradient is shared equally among the tied pairs, as the
        # reference's amax / amin do: recompute the tiles of the blocks that hold such an
        # anchor (the same blocks as the forward pass, so the same distances).
        tied_rows = torch.nonzero(tied & (g != 0)).flatten().add_(a0).tolist()
        for r0, r1 in row_blocks(a1, block_size, a0):
            if not any(r0 <= row < r1 for row in tied_rows):
                continue
            z_cols, sq_cols = _column_rows(z, sq, columns)
            d = distance_tile(z[r0:r1], z_cols, sq[r0:r1], sq_cols, distance)
            pos, neg = _masks(labels, r0, r1, columns)
            at_pos, at_neg = _tied_extremes(d, pos, neg)
            g_tied = torch.where(tied[r0 - a0 : r1 - a0], g[r0 - a0 : r1 - a0], 0.0)[:, None]
            weight = torch.where(at_pos, g_tied / at_pos.sum(dim=1, keepdim=True), 0.0)
            weight -= torch.where(at_neg, g_tied / at_neg.sum(dim=1, keepdim=True), 0.0)
            scatter_distance_grad(weight, d, z, slice(r0, r1), slice(*columns), distance, grad_z)
        return (*split_rows(grad_z, ref_rows), None, None, None, None, None, None)


@eager_under_compile
def triplet_hard_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor batch-hard triplet loss (Hermans et al. 2017) in :math:`O(N D + b N)`.

    The forward pass saves, per anchor, the index of its farthest positive and of its
    closest negative; the backward pass differentiates only those two pairs. Where several
    positives (or negatives) tie for the extreme distance, the gradient is shared equally
    among them, as ``torch.amax`` shares it in the reference; the backward pass then
    recomputes the tiles of the blocks holding such anchors.

    Args:
        z: Prepared embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        margin: :math:`m \ge 0`.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"`` (one minus the
            cosine similarity; the rows are normalized inside).
        block_size: Anchor rows per block; ``None`` sizes a ``b x N`` tile to 16 MiB.
        row_range: ``(start, stop)``: only rows ``start:stop`` of ``z`` are anchors (all
            rows stay columns; shapes ``(N,)`` below become ``(stop - start,)``);
            ``None`` means every row.
        reference: ``(ref_z, ref_labels)``, shapes ``(M, D)`` and ``(M,)``: every row of
            ``z`` is an anchor, compared with the reference rows instead (none of them
            its self-pair); exclusive with ``row_range``. Gradients flow to both.

    Returns:
        ``(loss, valid)``, shape ``(N,)`` each; ``loss`` is 0 where the anchor has no
        positive or no negative (``valid`` False).

    Example:
        >>> z = torch.tensor([[0.0], [1.0], [1.5]], dtype=torch.float64)
        >>> triplet_hard_tiled(z, torch.tensor([0, 0, 1]), margin=0.2)[0]
        tensor([0.0000, 0.7000, 0.0000], dtype=torch.float64)
    """
    ref_z, labels, anchors, columns = join_reference(z, labels, row_range, reference)
    block_size = check_prepared(z, labels[: z.shape[0]], block_size, columns)
    check_positive("margin", margin, allow_zero=True)
    check_distance(distance)
    loss, valid = _TripletHardTiledFunction.apply(  # type: ignore[no-untyped-call]
        _cosine_ready(z, distance),
        _cosine_ready(ref_z, distance),
        labels,
        float(margin),
        distance,
        block_size,
        anchors,
        columns,
    )
    return loss, valid


# ---------------------------------------------------------------- batch-all triplet


def _triplet_all_tile(
    d: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor ``(S, C)`` of a block and ``k`` (active negatives per positive pair)."""
    neg_sorted = d.masked_fill(~neg, float("inf")).sort(dim=1).values
    # prefix[:, r] = sum of the r smallest negative distances (inf never gets read).
    prefix = torch.nn.functional.pad(neg_sorted.cumsum(dim=1), (1, 0))
    threshold = d + margin
    k = torch.searchsorted(neg_sorted, threshold, side="left")
    pair_sum = k.to(d.dtype) * threshold - prefix.gather(1, k)
    k = k.masked_fill_(~pos, 0)
    total = torch.where(pos, pair_sum, torch.zeros_like(pair_sum)).sum(dim=1)
    # The sort and the search drop a NaN distance silently; in the enumeration it makes
    # every triplet it enters NaN, so it makes the anchor's sum NaN here too.
    total = torch.where(torch.isnan(d).any(dim=1), torch.nan, total)
    return total, k.sum(dim=1), k


class _TripletAllTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        ref_z: torch.Tensor | None,
        labels: torch.Tensor,
        margin: float,
        distance: str,
        block_size: int,
        row_range: tuple[int, int],
        columns: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = stack_rows(z, ref_z)
        a0, a1 = row_range  # anchors are rows a0:a1, the columns rows `columns`
        sq = (z * z).sum(dim=1)
        z_cols, sq_cols = _column_rows(z, sq, columns)
        total = torch.zeros(a1 - a0, dtype=z.dtype, device=z.device)
        count = torch.zeros(a1 - a0, dtype=torch.int64, device=z.device)
        valid = torch.zeros(a1 - a0, dtype=torch.bool, device=z.device)
        for r0, r1 in row_blocks(a1, block_size, a0):
            k0, k1 = r0 - a0, r1 - a0
            d = distance_tile(z[r0:r1], z_cols, sq[r0:r1], sq_cols, distance)
            pos, neg = _masks(labels, r0, r1, columns)
            total[k0:k1], count[k0:k1], _ = _triplet_all_tile(d, pos, neg, margin)
            valid[k0:k1] = pos.any(dim=1) & neg.any(dim=1)
        ctx.save_for_backward(z, labels, sq)
        ctx.options = (margin, distance, block_size, row_range, columns, reference_rows(ref_z))
        ctx.mark_non_differentiable(count, valid)
        return total, count, valid

    @staticmethod
    def backward(
        ctx: Any,
        grad_total: torch.Tensor,
        _grad_count: torch.Tensor | None,
        _grad_valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        z, labels, sq = ctx.saved_tensors
        margin, distance, block_size, (a0, a1), columns, ref_rows = ctx.options
        z_cols, sq_cols = _column_rows(z, sq, columns)
        grad_z = torch.zeros_like(z)
        for r0, r1 in row_blocks(a1, block_size, a0):
            d = distance_tile(z[r0:r1], z_cols, sq[r0:r1], sq_cols, distance)
            pos, neg = _masks(labels, r0, r1, columns)
            _, _, k = _triplet_all_tile(d, pos, neg, margin)
            # dS/dd_in = -#{p : d_ip + m > d_in}, with the same thresholds as the forward.
            thr_sorted = d.masked_fill(~pos, float("inf")).sort(dim=1).values + margin
            num_pos = pos.sum(dim=1, keepdim=True)
            active = num_pos - torch.searchsorted(thr_sorted, d, side="right")
            weight = k.to(d.dtype) - torch.where(neg, active, 0).to(d.dtype)
            weight.mul_(grad_total[r0 - a0 : r1 - a0, None])
            scatter_distance_grad(weight, d, z, slice(r0, r1), slice(*columns), distance, grad_z)
        return (*split_rows(grad_z, ref_rows), None, None, None, None, None, None)


@eager_under_compile
def triplet_all_tiled(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-anchor batch-all triplet sums and counts in :math:`O(N^2 \log N)` time.

    Each anchor's negative distances are sorted once; every positive then finds by binary
    search how many negatives violate the margin and reads their sum from a prefix sum.
    Extra memory is :math:`O(b N)` per block of ``b`` anchors, never :math:`O(N^2)`.

    Args:
        z: Prepared embeddings, shape ``(N, D)``, float32 or float64.
        labels: Class of each row, shape ``(N,)``, int64.
        margin: :math:`m \ge 0`.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        block_size: Anchor rows per block; ``None`` sizes a ``b x N`` tile to 4 MiB.
        row_range: ``(start, stop)``: only rows ``start:stop`` of ``z`` are anchors (all
            rows stay columns; shapes ``(N,)`` below become ``(stop - start,)``);
            ``None`` means every row.
        reference: ``(ref_z, ref_labels)``, shapes ``(M, D)`` and ``(M,)``: every row of
            ``z`` is an anchor, compared with the reference rows instead (none of them
            its self-pair); exclusive with ``row_range``. Gradients flow to both.

    Returns:
        ``(total, count, valid)``, each of shape ``(N,)``: :math:`S_i`, the sum of
        :math:`\max(0, d_{ip} - d_{in} + m)` over the anchor's triplets (differentiable),
        :math:`C_i`, how many of those are positive (int64), and whether the anchor has
        both a positive and a negative.

    Example:
        >>> z = torch.tensor([[0.0], [1.0], [1.5], [3.0]], dtype=torch.float64)
        >>> total, count, valid = triplet_all_tiled(z, torch.tensor([0, 0, 1, 1]), margin=0.2)
        >>> count.tolist()
        [0, 1, 2, 0]
    """
    ref_z, labels, anchors, columns = join_reference(z, labels, row_range, reference)
    rows = check_prepared(z, labels[: z.shape[0]], block_size)
    check_positive("margin", margin, allow_zero=True)
    check_distance(distance)
    if block_size is None:
        # A block holds about 15 numbers per pair (sorts, prefix sums, int64 counts), so
        # it gets a quarter of the usual tile.
        width = max(columns[1] - columns[0], 1)
        rows = max(16, min(z.shape[0], TILE_ELEMENTS // 4 // width))
    total, count, valid = _TripletAllTiledFunction.apply(  # type: ignore[no-untyped-call]
        _cosine_ready(z, distance),
        _cosine_ready(ref_z, distance),
        labels,
        float(margin),
        distance,
        rows,
        anchors,
        columns,
    )
    return total, count, valid
