"""The ``"reference"`` backend: the dense definitions of :mod:`nodulebench.kernels._dense`.

The dense per-anchor functions leave arbitrary values on invalid rows; these adapters
give them the kernels' return convention (0 on invalid rows; ``(total, count, valid)``
for batch-all triplet) and the kernels' way to name the columns (``row_range`` of a
gathered batch, or a separate ``reference`` set).
"""

from __future__ import annotations

from typing import Any

import torch

from nodulebench.kernels import _dense
from nodulebench.kernels._tiling import check_row_range

__all__ = [
    "cnc_reference",
    "contrastive_pml_reference",
    "contrastive_reference",
    "multi_similarity_reference",
    "supcon_reference",
    "triplet_all_reference",
    "triplet_hard_reference",
    "triplet_semihard_reference",
]

Reference = tuple[torch.Tensor, torch.Tensor]


def _zero_invalid(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, loss, torch.zeros_like(loss))


def _anchors(
    z: torch.Tensor,
    labels: torch.Tensor,
    row_range: tuple[int, int] | None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Anchors, their labels and the dense functions' column arguments.

    With ``row_range``, rows ``start:stop`` of ``z`` are the anchors and every row a
    column (a distributed loss's own rows of the gathered batch). With ``reference``
    ``(ref_z, ref_labels)``, every row of ``z`` is an anchor and the reference rows are
    the columns, none of them an anchor's self-pair. Neither keeps the plain all-rows call.
    """
    if reference is not None:
        if row_range is not None:
            raise ValueError(
                "row_range and reference are exclusive: with a reference set "
                f"every row of z is an anchor; got row_range={row_range!r}"
            )
        ref_z, ref_labels = reference
        return z, labels, {"columns": ref_z, "column_labels": ref_labels, "row_offset": None}
    if row_range is None:
        return z, labels, {}
    start, stop = check_row_range(row_range, z.shape[0])
    columns = {"columns": z, "column_labels": labels, "row_offset": start}
    return z[start:stop], labels[start:stop], columns


def supcon_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense SupCon per anchor: ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid = _dense.supcon_per_anchor(
        anchors, anchor_labels, temperature=temperature, variant=variant, **columns
    )
    return _zero_invalid(loss, valid), valid


def cnc_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense Correct-N-Contrast per anchor on pair labels: ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid = _dense.cnc_per_anchor(
        anchors, anchor_labels, temperature=temperature, variant=variant, **columns
    )
    return _zero_invalid(loss, valid), valid


def contrastive_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense contrastive loss per anchor: ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid = _dense.contrastive_per_anchor(anchors, anchor_labels, margin=margin, **columns)
    return _zero_invalid(loss, valid), valid


def contrastive_pml_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense pytorch-metric-learning contrastive sums and counts: ``(total, count, valid)``.

    ``total`` and ``count`` have shape ``(N, 2)``: positive pairs, negative pairs.
    """
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    total, valid, count = _dense.contrastive_pml_per_anchor(
        anchors, anchor_labels, pos_margin=pos_margin, neg_margin=neg_margin, **columns
    )
    return torch.where(valid[:, None], total, 0.0), count, valid


def triplet_hard_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense batch-hard triplet loss per anchor: ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid, _ = _dense.triplet_per_anchor(
        anchors, anchor_labels, margin=margin, distance=distance, mining="hard", **columns
    )
    return _zero_invalid(loss, valid), valid


def triplet_all_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense batch-all triplet sums and counts per anchor: ``(total, count, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    total, valid, count = _dense.triplet_per_anchor(
        anchors, anchor_labels, margin=margin, distance=distance, mining="all", **columns
    )
    if count is None:  # mining="all" always counts; this narrows the type
        raise RuntimeError("triplet_per_anchor(mining='all') returned no counts")
    return _zero_invalid(total, valid), count, valid


def triplet_semihard_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense semi-hard triplet loss per anchor (Schroff et al. 2015): ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid, _ = _dense.triplet_per_anchor(
        anchors, anchor_labels, margin=margin, distance=distance, mining="semihard", **columns
    )
    return _zero_invalid(loss, valid), valid


def multi_similarity_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    row_range: tuple[int, int] | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense multi-similarity loss per anchor: ``(loss, valid)``."""
    anchors, anchor_labels, columns = _anchors(z, labels, row_range, reference)
    loss, valid = _dense.multi_similarity_per_anchor(
        anchors, anchor_labels, alpha=alpha, beta=beta, base=base, epsilon=epsilon, **columns
    )
    return _zero_invalid(loss, valid), valid
