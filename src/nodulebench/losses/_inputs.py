"""Input preparation and reduction shared by every pairwise loss.

Every pairwise loss runs the same three steps: :func:`prepare_embeddings` (validate,
flatten views sample-major, expand labels, normalize, upcast), a per-anchor dense
function that returns ``(loss (N,), valid (N,))``, and :func:`reduce_per_anchor`. Keeping
the first and last step here means each loss body only holds its own maths, and a fast
kernel only has to replace the per-anchor step.

With ``gather_distributed=True`` under an initialised process group, the first step also
checks that the ranks agree (input shape and dtype, labels given or not, the loss's
options), then gathers every rank's prepared rows (the *columns*); the per-anchor step
computes this rank's rows (the *anchors*) against them; the last step normalises with
the global count so that DDP's gradient averaging is exact (see
:mod:`nodulebench.distributed`). Without gathering the columns are the rows themselves,
and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodulebench._validation import (
    check_choice,
    check_floating,
    check_integer_tensor,
    check_ndim,
)
from nodulebench.distributed import (
    abandon_gather,
    all_gather_no_grad,
    all_gather_with_grad,
    gather_sizes,
    get_rank,
    get_world_size,
    is_distributed,
    sum_over_ranks,
)

# Imported at run time where available so that the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
    "REDUCTIONS",
    "PreparedEmbeddings",
    "ReducedLoss",
    "check_reduction",
    "compute_dtype",
    "prepare_embeddings",
    "reduce_per_anchor",
]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    check_choice("reduction", reduction, REDUCTIONS)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the maths runs in: float32 for fp16/bf16 inputs, the input dtype otherwise."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


@dataclass(frozen=True)
class PreparedEmbeddings:
    """Embeddings flattened to anchor rows, ready for a per-anchor loss function.

    Attributes:
        rows: ``(N, D)`` embeddings, ``N = B * V``, row ``b * V + v`` is view ``v`` of
            sample ``b``; L2-normalized if asked; float32 or float64.
        labels: ``(N,)`` int64 label of each row (the sample index when no labels
            were given).
        leading_shape: ``(B,)`` or ``(B, V)``, the shape of ``reduction="none"`` output.
        source: the embeddings as passed in, used for a graph-connected zero.
        columns: ``(M, D)`` the rows every anchor is compared with: ``rows`` itself, or
            with ``gather_distributed=True`` the prepared rows of all ranks in rank order.
        column_labels: ``(M,)`` int64 labels of ``columns``.
        row_offset: index in ``columns`` of ``rows[0]``, so anchor ``i``'s self-pair is
            column ``row_offset + i`` (0 without gathering).
        world_size: ranks that share the loss (1 without gathering).
        group: the process group of the gather, or None.
    """

    rows: torch.Tensor
    labels: torch.Tensor
    leading_shape: tuple[int, ...]
    source: torch.Tensor
    columns: torch.Tensor
    column_labels: torch.Tensor
    row_offset: int = 0
    world_size: int = 1
    group: ProcessGroup | None = None

    @property
    def gathered(self) -> bool:
        """Whether the columns come from several ranks."""
        return self.world_size > 1

    @property
    def row_range(self) -> tuple[int, int] | None:
        """The anchors' rows ``(start, stop)`` in ``columns``; None when they are all rows.

        Passed to the per-anchor backends, which then compute only those anchors against
        every column; None keeps the single-process call exactly what it was.
        """
        if not self.gathered:
            return None
        return self.row_offset, self.row_offset + self.rows.shape[0]


def _check_inputs(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    normalize: bool,
    labels_required: bool,
    gather_distributed: bool,
) -> None:
    check_ndim("embeddings", embeddings, (2, 3), "(B, D) or (B, V, D)")
    check_floating("embeddings", embeddings)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool; got {type(normalize).__name__}")
    if not isinstance(gather_distributed, bool):
        raise TypeError(
            f"gather_distributed must be a bool; got {type(gather_distributed).__name__}"
        )
    if embeddings.numel() == 0:
        raise ValueError("embeddings must hold at least one sample, view and feature "
                         f"(B, V, D >= 1); got shape {tuple(embeddings.shape)}")
    batch = embeddings.shape[0]
    if labels is not None:
        check_ndim("labels", labels, (1,), "(B,)")
        check_integer_tensor("labels", labels)
        if labels.shape[0] != batch:
            raise ValueError(
                f"labels must have shape (B,) = ({batch},) to match embeddings of shape "
                f"{tuple(embeddings.shape)}; got shape {tuple(labels.shape)}"
            )
    elif labels_required:
        raise TypeError("labels must be a (B,) integer tensor for this loss; got None")


def prepare_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    normalize: bool,
    labels_required: bool,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
    options: Mapping[str, object] | None = None,
) -> PreparedEmbeddings:
    """Validate and flatten ``embeddings`` ``(B, D)`` or ``(B, V, D)`` and ``labels`` ``(B,)``.

    With ``labels=None`` (only where ``labels_required`` is false) the label of row
    ``b * V + v`` is ``b``: the views of one sample are each other's only positives.
    With ``gather_distributed=True`` and more than one rank in ``process_group``, the
    prepared rows and labels of every rank are gathered as the columns (a collective
    call), and ``b`` above is the *global* sample index. Before the gather the ranks
    exchange one header (:func:`~nodulebench.distributed.gather_sizes`): the shape but
    for ``B``, the dtype, whether labels were given, ``normalize`` and ``options`` (the
    loss's name and options, e.g. ``{"loss": "supcon", "temperature": 0.1, ...}``)
    must agree, or every rank raises the same ``ValueError`` naming what differs. A
    rank that rejects its own input still joins that exchange
    (:func:`~nodulebench.distributed.abandon_gather`) before raising, so that the others
    raise a ``ValueError`` naming it instead of waiting for it.

    Raises:
        TypeError: non-tensor or non-floating ``embeddings``; non-integer ``labels``;
            missing ``labels`` where they are required; an ``options`` value that is
            not ``None``, a bool, an int, a float or a str (with ``gather_distributed``).
        ValueError: wrong ranks, an empty dimension, or ``labels`` whose length differs
            from ``B``; with ``gather_distributed``, ranks that disagree on the header
            or a rank that rejected its input.
    """
    try:
        _check_inputs(embeddings, labels, normalize=normalize, labels_required=labels_required,
                      gather_distributed=gather_distributed)
    except (TypeError, ValueError):
        if isinstance(embeddings, torch.Tensor) and gather_distributed is True:
            # The other ranks are on their way to the header exchange: meet them there,
            # so that they fail now instead of waiting for this rank until the timeout.
            abandon_gather(process_group, device=embeddings.device)
        raise
    batch = embeddings.shape[0]
    views = embeddings.shape[1] if embeddings.ndim == 3 else 1
    rows = embeddings.reshape(batch * views, embeddings.shape[-1])
    rows = rows.to(compute_dtype(embeddings.dtype))
    if normalize:
        rows = F.normalize(rows, p=2.0, dim=1, eps=1e-12)
    leading_shape = tuple(embeddings.shape[:-1])
    gather = gather_distributed and is_distributed(process_group)
    # One exchange of the sizes and everything the ranks must agree on; checked locally
    # (and the identity) without a process group, so a bad option shows up in any run.
    agree = {**(options or {}), "normalize": normalize,
             "kind of labels": None if labels is None else "tensor"}
    sample_sizes = (
        gather_sizes(embeddings, process_group, agree=agree, name="embeddings")
        if gather_distributed else (batch,)
    )
    first_sample = sum(sample_sizes[: get_rank(process_group)]) if gather else 0
    if labels is None:
        sample_labels = torch.arange(first_sample, first_sample + batch, device=rows.device)
    else:
        sample_labels = labels.to(device=embeddings.device, dtype=torch.int64)
    row_labels = sample_labels.repeat_interleave(views)
    if not gather:
        return PreparedEmbeddings(rows, row_labels, leading_shape, embeddings, rows, row_labels)
    row_sizes = [size * views for size in sample_sizes]
    return PreparedEmbeddings(
        rows, row_labels, leading_shape, embeddings,
        columns=all_gather_with_grad(rows, process_group, sizes=row_sizes),
        column_labels=all_gather_no_grad(row_labels, process_group, sizes=row_sizes),
        row_offset=first_sample * views,
        world_size=get_world_size(process_group),
        group=process_group,
    )


class ReducedLoss(NamedTuple):
    """A reduced loss and the number of anchors that were excluded from it."""

    loss: torch.Tensor
    num_excluded_anchors: int


def _connected_zero(prepared: PreparedEmbeddings) -> torch.Tensor:
    # Zero that keeps the graph (so backward() works) and gives a zero gradient.
    zero = prepared.source.sum() * 0.0
    return zero.to(prepared.rows.dtype)


def reduce_per_anchor(
    per_anchor: torch.Tensor,
    valid: torch.Tensor,
    *,
    reduction: str,
    prepared: PreparedEmbeddings,
    counts: torch.Tensor | None = None,
) -> ReducedLoss:
    """Reduce a per-anchor loss over the valid anchors.

    Args:
        per_anchor: ``(N,)`` loss of each anchor (with ``counts``: a per-anchor sum).
        valid: ``(N,)`` bool, anchors that take part; the others get exactly 0 in
            ``"none"`` and are left out of ``"mean"`` and ``"sum"``.
        reduction: ``"mean"`` (over valid anchors), ``"sum"`` or ``"none"``.
        prepared: the prepared inputs (output shape, graph-connected zero, ranks).
        counts: optional ``(N,)`` number of terms in each anchor's sum (triplet
            ``mining="all"``). Then ``"mean"`` is ``sum(per_anchor) / sum(counts)``
            and ``"none"`` is ``per_anchor / counts`` (0 where ``counts`` is 0).

    Returns:
        The loss (scalar, or ``prepared.leading_shape`` for ``"none"``) in float32 or
        float64, and the number of invalid anchors. With no valid anchor (or no
        counted term) ``"mean"`` and ``"sum"`` give a zero still connected to the graph.
        For gathered inputs on :math:`W` ranks, ``"mean"`` is :math:`W` times this
        rank's sum over the *global* count (summed over ranks) and ``"sum"`` is
        :math:`W` times this rank's sum, so that the average over ranks (what DDP
        applies to gradients) is the single-process loss; ``"none"`` stays local and
        the excluded anchors are this rank's.
    """
    # torch.where, not a product: an invalid anchor's NaN/inf must not leak through.
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    num_excluded = int((~valid).sum().item())
    if counts is not None:
        counts = torch.where(valid, counts, torch.zeros_like(counts)).to(per_anchor.dtype)
    if reduction == "none":
        if counts is not None:
            per_anchor = torch.where(counts > 0, per_anchor / counts.clamp(min=1), 0.0)
        return ReducedLoss(per_anchor.reshape(prepared.leading_shape), num_excluded)
    denominator = valid.sum() if counts is None else counts.sum()
    if prepared.gathered:
        # Global count, so every rank takes the same branch below (and the same
        # collectives in backward).
        denominator = sum_over_ranks(denominator, prepared.group)
    if bool(denominator == 0):
        return ReducedLoss(_connected_zero(prepared), num_excluded)
    total = per_anchor.sum()
    if prepared.gathered:
        # W * (local share): DDP divides by W; see nodulebench.distributed.
        total = total * prepared.world_size
    loss = total if reduction == "sum" else total / denominator.to(total.dtype)
    return ReducedLoss(loss, num_excluded)
