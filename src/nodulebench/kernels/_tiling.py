"""Shared pieces of the tiled engine: row blocks, argument checks, distance tiles.

Every tiled kernel walks over blocks of ``block_size`` anchor rows; a block sees all ``M``
columns, so the largest temporary is ``block_size x M`` and nothing of size ``N x M`` is
ever held. The anchors and the columns are two row ranges of one matrix ``z``: the same
rows by default, a distributed loss's own rows against the gathered batch
(``row_range``), or every row of the batch against a separate reference set appended to
it (:func:`join_reference`); a column is an anchor's self-pair iff it is the same row.
The helpers here build the distance tile of a row block and push a tile of
upstream weights ``dL/dd_ij`` back to the embeddings, both as row and as column
contributions (the distance is symmetric in its two arguments).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from nodulebench._validation import check_choice, check_floating, check_ndim
from nodulebench.kernels._compile import eager_under_compile
from nodulebench.kernels.distances import DISTANCES, EUCLIDEAN_EPS

__all__ = [
    "TILE_EDGE",
    "TILE_ELEMENTS",
    "ShiftedLse",
    "DISTANCES",
    "EUCLIDEAN_EPS",
    "anchor_tiles",
    "check_distance",
    "check_prepared",
    "check_row_range",
    "distance_tile",
    "has_self_pairs",
    "join_reference",
    "eager_under_compile",
    "pair_distance",
    "reference_rows",
    "row_blocks",
    "scatter_distance_grad",
    "split_rows",
    "stack_rows",
    "scatter_pair_grad",
    "self_mask",
    "tile_pairs",
]

TILE_EDGE = 1024
"""Default edge of the square tiles of symmetric kernels: 4 MiB in float32."""

TILE_ELEMENTS = 2**22
"""Default size of a ``b x N`` tile: 16 MiB in float32 (b = 512 rows at N = 8192)."""


class ShiftedLse:
    """Online log-sum-exp of each anchor, kept relative to the anchor's running maximum.

    ``peak`` is the running maximum, ``total`` the sum of ``exp(s - peak)`` (at least 1
    once a finite entry was seen: the maximum contributes ``exp(0)``), so the LSE is
    ``peak + log(total)`` and ``log(total) >= 0``. With ``positive_sum`` it also keeps the
    sum of the positive entries minus the running maximum (at most 0). Losses are then
    differences of these small shifted terms, never of two logits of size ``|s|``: the
    rounding error is that of the logits themselves, a loss that is exactly 0 stays 0,
    and SupCon's ``"out"`` loss is never negative.
    """

    def __init__(self, size: int, like: torch.Tensor, positive_sum: bool = False) -> None:
        self.peak = torch.full((size,), float("-inf"), dtype=like.dtype, device=like.device)
        self.total = torch.zeros_like(self.peak)
        self.positive: torch.Tensor | None = None
        self.seen = torch.zeros_like(self.peak)
        if positive_sum:
            self.positive = torch.zeros_like(self.peak)

    def fold(
        self, rows: slice, tile: torch.Tensor, dim: int, positives: torch.Tensor | None = None
    ) -> None:
        """Fold the tile's entries along ``dim`` into the anchors ``rows``."""
        old = self.peak[rows]
        peak = torch.maximum(old, tile.amax(dim=dim))
        base = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        shape = (-1, 1) if dim == 1 else (1, -1)
        offset = tile - base.view(shape)  # the one tile-sized temporary
        if self.positive is not None and positives is not None:
            # The positives seen so far move with the maximum: -(count) * (peak - old).
            seen = self.seen[rows]
            moved = torch.where(seen > 0, seen * (old - base), torch.zeros_like(seen))
            self.positive[rows] += moved + (offset * positives).nan_to_num_(0.0).sum(dim)
            self.seen[rows] += positives.sum(dim).to(seen.dtype)
        self.total[rows] = self.total[rows] * torch.exp(old - base) + offset.exp_().sum(dim)
        self.peak[rows] = peak

    def shifted(self) -> torch.Tensor:
        """``LSE - peak`` (0 for an anchor without any finite entry)."""
        return torch.log(torch.where(self.total > 0, self.total, torch.ones_like(self.total)))


def check_prepared(
    z: torch.Tensor,
    labels: torch.Tensor,
    block_size: int | None,
    columns: tuple[int, int] | None = None,
    names: tuple[str, str] = ("z", "labels"),
) -> int:
    """Check the prepared inputs shared by every tiled kernel; return the block size.

    ``block_size=None`` picks ``TILE_ELEMENTS // M`` rows (at least 16, at most ``N``)
    for ``M`` columns: the rows ``columns`` of ``z`` (all ``N`` rows by default).
    ``names`` name the two tensors in the errors.
    """
    z_name, labels_name = names
    check_ndim(z_name, z, (2,), "(N, D)")
    check_floating(z_name, z)
    if z.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{z_name} must be float32 or float64 (prepared inputs are upcast); got {z.dtype}"
        )
    check_ndim(labels_name, labels, (1,), "(N,)")
    if labels.dtype != torch.int64:
        raise TypeError(f"{labels_name} must have dtype torch.int64; got {labels.dtype}")
    if labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"{labels_name} must have one entry per row of {z_name} "
            f"({z.shape[0]}); got {labels.shape[0]}"
        )
    if labels.device != z.device:
        raise ValueError(
            f"{labels_name} must be on {z_name}'s device {z.device}; got {labels.device}"
        )
    n = z.shape[0]
    if block_size is None:
        m = n if columns is None else columns[1] - columns[0]
        return max(16, min(n, TILE_ELEMENTS // max(m, 1)))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int or None; got {block_size!r}")
    return block_size


def check_distance(distance: str) -> None:
    """Raise ``ValueError`` unless ``distance`` is a supported distance name."""
    check_choice("distance", distance, DISTANCES)


def row_blocks(n: int, block_size: int, first: int = 0) -> Iterator[tuple[int, int]]:
    """Yield ``(start, stop)`` of consecutive row blocks covering ``range(first, n)``."""
    for start in range(first, n, block_size):
        yield start, min(start + block_size, n)


def check_row_range(row_range: tuple[int, int] | None, n: int) -> tuple[int, int]:
    """The anchor rows ``(start, stop)`` of a kernel call; ``None`` means all ``n`` rows.

    A distributed loss passes the gathered global batch as ``z`` and its own rows as
    the range: those rows are the anchors, every row of ``z`` is a column.
    """
    if row_range is None:
        return 0, n
    if (
        not isinstance(row_range, tuple)
        or len(row_range) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in row_range)
        or not 0 <= row_range[0] <= row_range[1] <= n
    ):
        raise ValueError(
            f"row_range must be a (start, stop) pair of ints with 0 <= start <= stop <= "
            f"N = {n}, or None; got {row_range!r}"
        )
    return row_range


def join_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    row_range: tuple[int, int] | None,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor | None, torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Check a kernel call; return ``(ref_z, labels, anchors, columns)``.

    The kernels see the anchors and the columns as two row ranges of one matrix,
    :func:`stack_rows` of ``z`` and ``ref_z``, with the labels returned here. Without
    ``reference`` (``ref_z`` None) the anchors are ``row_range`` (every row by default)
    and the columns every row. With ``reference=(ref_z, ref_labels)`` (``(M, D)``,
    ``(M,)``) the anchors are the ``N`` rows of ``z`` and the columns the ``M`` rows
    appended after them, so none is an anchor's self-pair; the kernel splits its
    gradient back with :func:`split_rows`. The copy is ``O((N + M) D)``.
    """
    check_prepared(z, labels, None)
    n = z.shape[0]
    if reference is None:
        return None, labels, check_row_range(row_range, n), (0, n)
    if row_range is not None:
        raise ValueError(
            "row_range and reference are exclusive: with a reference set "
            f"every row of z is an anchor; got row_range={row_range!r}"
        )
    if not isinstance(reference, tuple) or len(reference) != 2:
        raise TypeError(
            "reference must be a (ref_z, ref_labels) pair of tensors; got "
            f"{type(reference).__name__}"
        )
    ref_z, ref_labels = reference
    check_prepared(ref_z, ref_labels, None, names=("ref_z", "ref_labels"))
    if ref_z.shape[0] == 0:
        raise ValueError("ref_z must hold at least one row; got shape (0, D)")
    if ref_z.shape[1] != z.shape[1] or ref_z.dtype != z.dtype or ref_z.device != z.device:
        raise ValueError(
            f"ref_z must match z's D = {z.shape[1]}, dtype {z.dtype} and device {z.device}; "
            f"got D = {ref_z.shape[1]}, {ref_z.dtype} on {ref_z.device}"
        )
    m = ref_z.shape[0]
    return ref_z, torch.cat((labels, ref_labels)), (0, n), (n, n + m)


def stack_rows(z: torch.Tensor, ref_z: torch.Tensor | None) -> torch.Tensor:
    """The kernel's one matrix: ``z``, with the reference rows (if any) appended.

    Called inside the kernels' forward passes, where autograd is off: the joined matrix
    is the kernel's own, and its gradient goes back through :func:`split_rows`.
    """
    return z if ref_z is None else torch.cat((z, ref_z))


def reference_rows(ref_z: torch.Tensor | None) -> int | None:
    """How many reference rows :func:`stack_rows` appends (None: no reference set)."""
    return None if ref_z is None else ref_z.shape[0]


def split_rows(
    grad: torch.Tensor, ref_rows: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradient of :func:`stack_rows`'s matrix as ``(grad_z, grad_ref_z)``.

    ``ref_rows``: :func:`reference_rows` of the call.
    """
    if ref_rows is None:
        return grad, None
    n = grad.shape[0] - ref_rows
    return grad[:n], grad[n:]


def has_self_pairs(anchors: tuple[int, int], columns: tuple[int, int]) -> bool:
    """Whether each anchor is also a column (its self-pair), as opposed to a reference set."""
    return columns[0] <= anchors[0] and anchors[1] <= columns[1]


def self_mask(
    start: int, stop: int, n: int, device: torch.device, first_column: int = 0
) -> torch.Tensor:
    """Boolean ``(stop - start, n - first_column)`` tile, True on the self-pairs ``(i, i)``.

    Rows ``start:stop`` against columns ``first_column:n``.
    """
    rows = torch.arange(start, stop, device=device)
    cols = torch.arange(first_column, n, device=device)
    return rows[:, None] == cols[None, :]


def distance_tile(
    z_rows: torch.Tensor,
    z: torch.Tensor,
    sq_rows: torch.Tensor,
    sq: torch.Tensor,
    distance: str,
) -> torch.Tensor:
    """Distances between a block of rows and all rows, shape ``(b, N)``.

    ``sq`` holds the squared row norms. For ``"cosine"`` the rows must already be unit
    vectors (the caller normalizes them outside the kernel, under autograd).
    """
    gram = z_rows @ z.T
    if distance == "cosine":
        return gram.neg_().add_(1.0)
    d2 = gram.mul_(-2.0).add_(sq_rows[:, None]).add_(sq[None, :]).clamp_(min=0.0)
    if distance == "squared_euclidean":
        return d2
    return d2.clamp_(min=EUCLIDEAN_EPS).sqrt_()


def _d_distance_d_sq(dist: torch.Tensor, distance: str) -> torch.Tensor:
    """``dd/d(d2_raw)`` from the distance values, following ``clamp``'s gradient rule."""
    if distance == "squared_euclidean":
        return torch.ones_like(dist)
    # d = sqrt(max(d2, eps)): derivative 1 / (2 d), and 0 where the floor is active.
    floor = torch.tensor(EUCLIDEAN_EPS, dtype=dist.dtype).sqrt()
    return torch.where(dist > floor, 0.5 / dist, torch.zeros_like(dist))


def scatter_distance_grad(
    weights: torch.Tensor,
    dist: torch.Tensor,
    z: torch.Tensor,
    rows: slice,
    cols: slice,
    distance: str,
    grad_z: torch.Tensor,
) -> None:
    """Add the gradient of ``sum_ij weights_ij * d_ij`` over one tile to ``grad_z``.

    ``weights`` and ``dist`` are tiles of rows ``rows`` x columns ``cols``. With
    ``d2_ij = |z_i|^2 + |z_j|^2 - 2 z_i . z_j`` and ``H = weights * dd/dd2`` the row
    contribution is ``2 (rowsum(H) z_i - H z_cols)`` and the column contribution
    ``2 (colsum(H) z_j - H^T z_rows)``; cosine distance has ``dd/d(z_i . z_j) = -1``.
    """
    z_rows, z_cols = z[rows], z[cols]
    if distance == "cosine":
        grad_z[rows].addmm_(weights, z_cols, alpha=-1.0)
        grad_z[cols].addmm_(weights.T, z_rows, alpha=-1.0)
        return
    h = weights * _d_distance_d_sq(dist, distance)
    grad_z[rows].add_(2.0 * h.sum(dim=1, keepdim=True) * z_rows)
    grad_z[rows].addmm_(h, z_cols, alpha=-2.0)
    grad_z[cols].add_(2.0 * h.sum(dim=0)[:, None] * z_cols)
    grad_z[cols].addmm_(h.T, z_rows, alpha=-2.0)


def anchor_tiles(
    n: int,
    block_size: int,
    row_range: tuple[int, int],
    column_range: tuple[int, int] | None = None,
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(r0, r1, c0, c1)`` of the anchors ``row_range`` against the columns.

    The columns are the rows ``column_range`` (all ``n`` by default). When every row is
    an anchor and a column, the upper block triangle of :func:`tile_pairs` (for a
    symmetric pair function an off-diagonal tile serves its rows and its columns); else
    every anchor block against every column block.
    """
    a0, a1 = row_range
    k0, k1 = (0, n) if column_range is None else column_range
    if (a0, a1) == (k0, k1) == (0, n):
        return tile_pairs(n, block_size)
    columns = list(row_blocks(k1, block_size, k0))
    return [(r0, r1, c0, c1) for r0, r1 in row_blocks(a1, block_size, a0) for c0, c1 in columns]


def tile_pairs(n: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """Blocks ``(r0, r1, c0, c1)`` of the upper block triangle of a symmetric matrix.

    Each off-diagonal tile serves its rows along dim 1 and its columns along dim 0.
    """
    blocks = list(row_blocks(n, block_size))
    return [(r0, r1, c0, c1) for i, (r0, r1) in enumerate(blocks) for c0, c1 in blocks[i:]]


def pair_distance(z: torch.Tensor, i: torch.Tensor, j: torch.Tensor, distance: str) -> torch.Tensor:
    """Distances of the pairs ``(i[k], j[k])``, shape ``(K,)``, by the tile formula."""
    zi, zj = z[i], z[j]
    dot = (zi * zj).sum(dim=1)
    if distance == "cosine":
        return 1.0 - dot
    d2 = ((zi * zi).sum(dim=1) + (zj * zj).sum(dim=1) - 2.0 * dot).clamp(min=0.0)
    if distance == "squared_euclidean":
        return d2
    return d2.clamp(min=EUCLIDEAN_EPS).sqrt()


def scatter_pair_grad(
    weights: torch.Tensor,
    z: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    distance: str,
    grad_z: torch.Tensor,
) -> None:
    """Add the gradient of ``sum_k weights_k * d(z_i[k], z_j[k])`` to ``grad_z`` (O(K D))."""
    zi, zj = z[i], z[j]
    if distance == "cosine":
        grad_z.index_add_(0, i, -weights[:, None] * zj)
        grad_z.index_add_(0, j, -weights[:, None] * zi)
        return
    dist = pair_distance(z, i, j, distance)
    coeff = (2.0 * weights * _d_distance_d_sq(dist, distance))[:, None]
    diff = zi - zj
    grad_z.index_add_(0, i, coeff * diff)
    grad_z.index_add_(0, j, -coeff * diff)
