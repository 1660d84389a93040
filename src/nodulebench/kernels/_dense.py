"""Dense per-anchor loss functions: the definitions, served as the ``"reference"`` backend.

Each ``*_per_anchor`` function takes prepared rows ``z`` ``(N, D)`` (float32 or
float64, already normalized if asked) and row labels ``(N,)`` int64, and returns the
per-anchor loss ``(N,)`` and a ``valid`` mask ``(N,)`` bool (triplet ``mining="all"``
also returns per-anchor counts). Values on invalid rows are arbitrary: the caller
replaces them with 0. This is the boundary where faster backends plug in; they must
return the same tensors. The functions build dense ``(N, N)`` (and, for triplet
``"all"``, ``(N, N, N)``) tensors: they are definitions, not kernels.

Every function also takes keyword-only ``columns`` ``(M, D)``, ``column_labels``
``(M,)`` and ``row_offset``: the anchors ``z`` are then compared with the columns, and
anchor ``i`` is column ``row_offset + i`` (its self-pair). That is how a distributed
loss computes its local anchors against the gathered global batch; the default
(``columns=None``) is the whole batch against itself. ``row_offset=None`` means the
columns are a separate reference set (``ref_emb``): no column is an anchor's self-pair.
"""

from __future__ import annotations

import math

import torch

from nodulebench.kernels.distances import euclidean_distance, pairwise_distance

__all__ = [
    "SUPCON_VARIANTS",
    "TRIPLET_MININGS",
    "cnc_per_anchor",
    "contrastive_per_anchor",
    "contrastive_pml_per_anchor",
    "masked_max",
    "masked_min",
    "multi_similarity_per_anchor",
    "pack_pair_labels",
    "pair_masks",
    "supcon_per_anchor",
    "triplet_per_anchor",
    "unpack_pair_labels",
]

SUPCON_VARIANTS: tuple[str, ...] = ("out", "in")
"""SupCon's two forms: the average over positives outside (``"out"``) or inside the log."""

TRIPLET_MININGS: tuple[str, ...] = ("all", "hard", "semihard")
"""Which triplets of a batch a triplet loss uses."""


def pair_masks(
    labels: torch.Tensor,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, M)`` bool masks: self pairs, positives ``P(i)`` and negatives ``Neg(i)``.

    Anchor ``i`` (label ``labels[i]``) is column ``row_offset + i``; the columns'
    labels are ``column_labels`` (default: ``labels``, so ``M = N``). With
    ``row_offset=None`` no column is an anchor (a separate reference set).
    """
    column_labels = labels if column_labels is None else column_labels
    same = labels[:, None] == column_labels[None, :]
    if row_offset is None:
        return torch.zeros_like(same), same, ~same
    anchor_index = torch.arange(labels.shape[0], device=labels.device) + row_offset
    column_index = torch.arange(column_labels.shape[0], device=labels.device)
    self_pair = anchor_index[:, None] == column_index[None, :]
    same = labels[:, None] == column_labels[None, :]
    return self_pair, same & ~self_pair, ~same


def _column_set(
    z: torch.Tensor,
    labels: torch.Tensor,
    columns: torch.Tensor | None,
    column_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns and their labels: the anchors themselves unless given."""
    if (columns is None) != (column_labels is None):
        raise ValueError(
            "columns and column_labels must be given together; got only "
            + ("columns" if column_labels is None else "column_labels")
        )
    if columns is None or column_labels is None:
        return z, labels
    return columns, column_labels


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise max of ``values`` over ``mask`` (``-inf`` where a row's mask is empty)."""
    return torch.where(mask, values, -math.inf).amax(dim=1)


def masked_min(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise min of ``values`` over ``mask`` (``+inf`` where a row's mask is empty)."""
    return torch.where(mask, values, math.inf).amin(dim=1)


def supcon_per_anchor(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor SupCon loss (the backend boundary).

    Args:
        z: ``(N, D)`` prepared rows (float32 or float64).
        labels: ``(N,)`` int64 row labels.
        temperature: ``tau > 0``.
        variant: ``"out"`` or ``"in"``.
        columns: ``(M, D)`` rows compared with the anchors; ``None`` means ``z``.
        column_labels: ``(M,)`` their labels (with ``columns``).
        row_offset: column index of anchor 0, or None (see the module docstring).

    Returns:
        ``loss (N,)`` and ``valid (N,)`` bool (``|P(i)| > 0``); ``loss`` is finite on
        valid rows, arbitrary (later replaced by 0) on invalid ones.
    """
    columns, column_labels = _column_set(z, labels, columns, column_labels)
    self_pair, positive, _ = pair_masks(labels, column_labels, row_offset)
    return _contrast(z, columns, ~self_pair, positive, temperature, variant)


def _contrast(
    z: torch.Tensor,
    columns: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon's per-anchor form over the ``(N, M)`` masks of candidates ``A(i)`` and ``P(i)``."""
    num_positives = positive.sum(dim=1)
    valid = num_positives > 0
    logits = (z @ columns.T) / temperature
    # Non-candidates masked to -inf before the LSE (never computed then subtracted). Rows
    # of invalid anchors are zeroed so that their LSE, and its gradient, stay finite.
    keep_rows = valid[:, None]
    anchor_logits = torch.where(keep_rows, logits.masked_fill(~candidates, -math.inf), 0.0)
    log_denominator = torch.logsumexp(anchor_logits, dim=1)
    count = num_positives.clamp(min=1).to(z.dtype)
    if variant == "out":
        mean_positive_logit = torch.where(positive, logits, 0.0).sum(dim=1) / count
        loss = log_denominator - mean_positive_logit
    else:
        positive_logits = torch.where(keep_rows, logits.masked_fill(~positive, -math.inf), 0.0)
        log_mean_exp_positive = torch.logsumexp(positive_logits, dim=1) - count.log()
        loss = log_denominator - log_mean_exp_positive
    return loss, valid


_LOW_BITS = 32


def pack_pair_labels(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """One int64 code per row that carries a class label and a prediction.

    Correct-N-Contrast compares rows by two label vectors; packed into one, they travel
    through the views, the distributed gather and the kernels' ``labels`` argument like
    any label. Values must lie in the int32 range (class indices do): the class is the
    high half, the prediction (as its 32-bit pattern) the low half.

    Example:
        >>> codes = pack_pair_labels(torch.tensor([0, 1, -1]), torch.tensor([1, 1, 2]))
        >>> [t.tolist() for t in unpack_pair_labels(codes)]
        [[0, 1, -1], [1, 1, 2]]
    """
    low = predictions.to(torch.int64) & ((1 << _LOW_BITS) - 1)
    return (labels.to(torch.int64) << _LOW_BITS) | low


def unpack_pair_labels(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, predictions)`` of :func:`pack_pair_labels`'s codes.

    The predictions come back as their 32-bit patterns: equal predictions, equal values.
    """
    return codes >> _LOW_BITS, codes & ((1 << _LOW_BITS) - 1)


def cnc_per_anchor(
    z: torch.Tensor,
    pair_labels: torch.Tensor,
    *,
    temperature: float,
    variant: str,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor Correct-N-Contrast loss (the backend boundary).

    ``pair_labels`` (and ``column_labels``) are :func:`pack_pair_labels` codes of the
    class labels ``y`` and a reference model's predictions ``k``. Positives of anchor
    ``i`` are the columns with ``y_j = y_i`` and ``k_j != k_i``, negatives those with
    ``k_j = k_i`` and ``y_j != y_i``; the candidates ``A(i)`` are both sets (no self-pair:
    it agrees in both). The loss is SupCon's over these sets.

    Returns:
        ``loss (N,)`` and ``valid (N,)`` bool (at least one positive).
    """
    columns, column_labels = _column_set(z, pair_labels, columns, column_labels)
    labels, predictions = unpack_pair_labels(pair_labels)
    column_classes, column_predictions = unpack_pair_labels(column_labels)
    same_class = labels[:, None] == column_classes[None, :]
    same_prediction = predictions[:, None] == column_predictions[None, :]
    positive = same_class & ~same_prediction
    return _contrast(z, columns, same_class ^ same_prediction, positive, temperature, variant)


def contrastive_per_anchor(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor Hadsell contrastive loss (the backend boundary).

    Returns ``loss (N,)`` (mean over the ``M - 1`` other columns, ``M = N`` without
    ``columns``; over all ``M`` columns of a reference set) and ``valid (N,)`` (true iff
    that count is at least 1).
    """
    columns, column_labels = _column_set(z, labels, columns, column_labels)
    n = column_labels.shape[0] + (1 if row_offset is None else 0)
    self_pair, positive, _ = pair_masks(labels, column_labels, row_offset)
    distance = euclidean_distance(z, columns)
    pull = 0.5 * distance.square()
    push = 0.5 * (margin - distance).clamp(min=0.0).square()
    cost = torch.where(positive, pull, push).masked_fill(self_pair, 0.0)
    loss = cost.sum(dim=1) / max(n - 1, 1)
    valid = torch.full((z.shape[0],), n >= 2, dtype=torch.bool, device=z.device)
    return loss, valid


def contrastive_pml_per_anchor(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float,
    neg_margin: float,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor pytorch-metric-learning contrastive terms (the backend boundary).

    With the Euclidean distance ``d``, a positive pair costs ``max(0, d - pos_margin)``
    and a negative pair ``max(0, neg_margin - d)``, unsquared.

    Returns:
        ``sums (N, 2)``: each anchor's sum over its positive pairs and over its negative
        pairs; ``valid (N,)`` (at least one other column); ``counts (N, 2)``: how many of
        those terms are positive (what the mean over non-zero terms divides by).
    """
    columns, column_labels = _column_set(z, labels, columns, column_labels)
    _, positive, negative = pair_masks(labels, column_labels, row_offset)
    distance = euclidean_distance(z, columns)
    pull = torch.where(positive, (distance - pos_margin).clamp(min=0.0), 0.0)
    push = torch.where(negative, (neg_margin - distance).clamp(min=0.0), 0.0)
    sums = torch.stack((pull.sum(dim=1), push.sum(dim=1)), dim=1)
    counts = torch.stack(((pull > 0).sum(dim=1), (push > 0).sum(dim=1)), dim=1)
    valid = (positive | negative).any(dim=1)
    return sums, valid, counts


def triplet_per_anchor(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    distance: str,
    mining: str,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-anchor triplet loss (the backend boundary).

    Args:
        z: ``(N, D)`` prepared rows.
        labels: ``(N,)`` int64 row labels.
        margin: ``m >= 0``.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        mining: ``"all"``, ``"hard"`` or ``"semihard"``.
        columns: ``(M, D)`` rows compared with the anchors; ``None`` means ``z``.
        column_labels: ``(M,)`` their labels (with ``columns``).
        row_offset: column index of anchor 0, or None (see the module docstring).

    Returns:
        ``loss (N,)``, ``valid (N,)`` (``P(i)`` and ``Neg(i)`` nonempty) and ``counts``:
        for ``"all"`` the loss is the per-anchor sum ``S_i`` of the triplet losses and
        ``counts`` the number ``C_i`` of positive ones; ``None`` for the other minings.
    """
    columns, column_labels = _column_set(z, labels, columns, column_labels)
    _, positive, negative = pair_masks(labels, column_labels, row_offset)
    valid = positive.any(dim=1) & negative.any(dim=1)
    d = pairwise_distance(z, distance, None if columns is z else columns)
    # The hinge is relu, whose gradient is 0 at 0: a triplet exactly at the margin is
    # satisfied (and not counted). Tied extremes share the gradient equally (amax / amin).
    if mining == "hard":
        hardest_positive = torch.where(valid, masked_max(d, positive), 0.0)
        hardest_negative = torch.where(valid, masked_min(d, negative), 0.0)
        return torch.relu(hardest_positive - hardest_negative + margin), valid, None
    if mining == "semihard":
        return _semihard(d, positive, negative, valid, margin), valid, None
    # t[i, p, n] = d_ip - d_in + m over valid (p, n) for anchor i.
    triplet_valid = positive[:, :, None] & negative[:, None, :]
    raw = d[:, :, None] - d[:, None, :] + margin
    losses = torch.where(triplet_valid, torch.relu(raw), 0.0)
    counts = (triplet_valid & (raw > 0)).sum(dim=(1, 2))
    return losses.sum(dim=(1, 2)), valid, counts


def _semihard(
    d: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    valid: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Semi-hard triplet loss per anchor from sorted negatives, in ``O(N M)`` memory.

    For each positive pair ``(i, p)`` the chosen negative distance ``v_ip`` is the
    smallest ``d_in > d_ip``, or the largest ``d_in`` if none is farther; the anchor's loss
    is the mean over its positives of ``relu(d_ip - v_ip + m)``. Each anchor's negative
    distances are sorted once and ``v_ip`` found by binary search (no ``(N, M, M)``
    tensor). Negatives tied at ``v_ip`` share that pair's gradient equally, as a ``min``
    over them by ``amin`` would; the gradient of ``relu`` is 0 at 0.
    """
    with torch.no_grad():
        neg_sorted, order = torch.where(negative, d, math.inf).sort(dim=1)
        last_negative = (negative.sum(dim=1, keepdim=True) - 1).clamp(min=0)
        farther = torch.searchsorted(neg_sorted, d.contiguous(), side="right")
        chosen = neg_sorted.gather(1, torch.minimum(farther, last_negative))
        active = positive & valid[:, None] & (d - chosen + margin > 0)
        # Each active pair's unit of gradient, split over the negatives tied at v_ip: summed
        # at the first sorted position of the tie, then spread to every member of it.
        tie_start = torch.searchsorted(neg_sorted, chosen, side="left")
        tie_size = torch.searchsorted(neg_sorted, chosen, side="right") - tie_start
        share = active.to(d.dtype) / tie_size.clamp(min=1).to(d.dtype)
        at_start = torch.zeros_like(d).scatter_add_(1, tie_start.clamp(max=d.shape[1] - 1), share)
        group_start = torch.searchsorted(neg_sorted, neg_sorted, side="left")
        weight_sorted = at_start.gather(1, group_start.clamp(max=d.shape[1] - 1))
        weight = torch.zeros_like(d).scatter_(1, order, weight_sorted) * negative
    # sum_p relu(d_ip - v_ip + m) = sum_active (d_ip + m) - sum_n weight_in d_in. Products,
    # not torch.where, so that a NaN distance reaches the loss.
    pair_sum = (active * (d + margin)).sum(dim=1) - (weight * d).sum(dim=1)
    return pair_sum / positive.sum(dim=1).clamp(min=1).to(d.dtype)


def multi_similarity_per_anchor(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    base: float,
    epsilon: float,
    columns: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    row_offset: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor multi-similarity loss with its pair mining (the backend boundary).

    ``S = z z^T`` (``z columns^T`` with ``columns``; cosine similarity for normalized
    rows). Keeps positive ``p`` when ``S_ip - epsilon < max_n S_in`` and negative ``n``
    when ``S_in + epsilon > min_p S_ip``. ``columns``, ``column_labels`` and
    ``row_offset`` as for :func:`supcon_per_anchor`.

    Returns:
        ``loss (N,)`` and ``valid (N,)`` (``P(i)`` nonempty).
    """
    columns, column_labels = _column_set(z, labels, columns, column_labels)
    _, positive, negative = pair_masks(labels, column_labels, row_offset)
    valid = positive.any(dim=1)
    similarity = z @ columns.T
    # Mining decides which pairs count; it is a selection, so no gradient flows through it.
    # Written as negated comparisons so that a NaN similarity keeps its pair and the NaN
    # reaches the loss instead of being silently mined away.
    with torch.no_grad():
        hardest_negative = masked_max(similarity, negative)
        hardest_positive = masked_min(similarity, positive)
        kept_positive = positive & ~(similarity - epsilon >= hardest_negative[:, None])
        kept_negative = negative & ~(similarity + epsilon <= hardest_positive[:, None])
    positive_term = _log1p_sum_exp(-alpha * (similarity - base), kept_positive) / alpha
    negative_term = _log1p_sum_exp(beta * (similarity - base), kept_negative) / beta
    return positive_term + negative_term, valid


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log(1 + sum_{mask} exp(x))``, stable: an LSE with a zero column."""
    masked = torch.where(mask, x, -math.inf)
    with_one = torch.cat((torch.zeros_like(masked[:, :1]), masked), dim=1)
    return torch.logsumexp(with_one, dim=1)
