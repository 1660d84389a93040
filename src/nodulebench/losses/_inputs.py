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

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodulebench._validation import (
    check_floating,
    check_integer_tensor,
    check_ndim,
    check_same_device,
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
    "compute_dtype",
    "prepare_embeddings",
    "reduce_per_anchor",
]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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
        source: the embeddings as passed in.
        columns: ``(M, D)`` the rows every anchor is compared with: ``rows`` itself,
            with ``gather_distributed=True`` the prepared rows of all ranks in rank
            order, or the prepared reference set (``ref_emb``, gathered too if asked).
        column_labels: ``(M,)`` int64 labels of ``columns``.
        row_offset: index in ``columns`` of ``rows[0]``, so anchor ``i``'s self-pair is
            column ``row_offset + i`` (0 without gathering); unused for a reference set.
        world_size: ranks that share the loss (1 without gathering).
        group: the process group of the gather, or None.
        reference: whether ``columns`` is a separate reference set, so that no column
            is an anchor's self-pair.
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
    reference: bool = False

    @property
    def gathered(self) -> bool:
        """Whether the columns come from several ranks."""
        return self.world_size > 1

    @property
    def row_range(self) -> tuple[int, int] | None:
        """The anchors' rows ``(start, stop)`` in ``columns``; None when they are all rows.

        Passed to the per-anchor backends, which then compute only those anchors against
        every column (the gathered batch, a memory bank's rows after the batch); None
        keeps the single-process call exactly what it was.
        """
        if self.reference or self.columns.shape[0] == self.rows.shape[0]:
            return None
        return self.row_offset, self.row_offset + self.rows.shape[0]

    def kernel_inputs(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(z, labels, where)`` for :func:`~nodulebench.kernels.dispatch.run_per_anchor`.

        ``where`` names the columns: ``row_range`` (this rank's rows of the gathered
        batch ``z``) and ``reference`` (a separate reference set), each None when unused.
        """
        if self.reference:
            return (
                self.rows,
                self.labels,
                {"row_range": None, "reference": (self.columns, self.column_labels)},
            )
        return self.columns, self.column_labels, {"row_range": self.row_range, "reference": None}


def _flatten(
    name: str,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    labels_name: str,
    *,
    normalize: bool,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
    """Check ``embeddings`` ``(B, D)`` / ``(B, V, D)`` and ``labels`` ``(B,)``; flatten.

    Returns the ``(B * V, D)`` rows (upcast, or cast to ``dtype``, normalized if asked),
    the ``(B * V,)`` int64 row labels (None without labels) and the leading shape.
    """
    check_ndim(name, embeddings, (2, 3), "(B, D) or (B, V, D)")
    check_floating(name, embeddings)
    if embeddings.numel() == 0:
        raise ValueError(
            f"{name} must hold at least one sample, view and feature "
            f"(B, V, D >= 1); got shape {tuple(embeddings.shape)}"
        )
    batch = embeddings.shape[0]
    views = embeddings.shape[1] if embeddings.ndim == 3 else 1
    row_labels = None
    if labels is not None:
        check_ndim(labels_name, labels, (1,), "(B,)")
        check_integer_tensor(labels_name, labels)
        if labels.shape[0] != batch:
            raise ValueError(
                f"{labels_name} must have shape (B,) = ({batch},) to match {name} of shape "
                f"{tuple(embeddings.shape)}; got shape {tuple(labels.shape)}"
            )
        check_same_device(labels_name, labels, name, embeddings)
        row_labels = labels.to(dtype=torch.int64)
        row_labels = row_labels.repeat_interleave(views)
    rows = embeddings.reshape(batch * views, embeddings.shape[-1])
    if (
        embeddings.dtype == torch.float16
        and embeddings.requires_grad
        and not torch.compiler.is_compiling()
    ):
        rows = _Float16GradientGuard.apply(rows, name)  # type: ignore[no-untyped-call]
    rows = rows.to(compute_dtype(embeddings.dtype) if dtype is None else dtype)
    if normalize:
        rows = F.normalize(rows, p=2.0, dim=1, eps=1e-12)
    return rows, row_labels, tuple(embeddings.shape[:-1])


class _Float16GradientGuard(torch.autograd.Function):
    """The identity, whose backward warns where a float16 gradient overflowed to inf.

    The losses compute in float32; the gradient is cast back to the float16 input on the
    way out, and an entry beyond 65504 becomes ``inf`` there. This sits on the float16
    side of that cast, so it sees the cast gradient (one host synchronisation, float16
    inputs only).
    """

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, name: str) -> torch.Tensor:
        ctx.name = name
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        overflowed = int(torch.isinf(grad).sum())
        if overflowed:
            warnings.warn(
                f"the gradient of the float16 {ctx.name} overflowed to inf in {overflowed} "
                f"of {grad.numel()} entries (float16 holds at most 65504; the loss itself "
                "is computed in float32); pass float32 embeddings, scale the loss down, "
                "or use a gradient scaler that skips such steps",
                RuntimeWarning,
                stacklevel=2,
            )
        return grad, None


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")


def prepare_embeddings(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    normalize: bool,
    labels_required: bool,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    options: Mapping[str, object] | None = None,
    gather_timeout: float | None = None,
) -> PreparedEmbeddings:
    """Validate and flatten ``embeddings`` ``(B, D)`` or ``(B, V, D)`` and ``labels`` ``(B,)``.

    With ``labels=None`` (only where ``labels_required`` is false) the label of row
    ``b * V + v`` is ``b``: the views of one sample are each other's only positives.
    With ``gather_distributed=True`` and more than one rank in ``process_group``, the
    prepared rows and labels of every rank are gathered as the columns (a collective
    call), and ``b`` above is the *global* sample index. Before the gather the ranks
    exchange one header (:func:`~nodulebench.distributed.gather_sizes`): the shape but
    for ``B``, the dtype, whether labels, a reference set and a memory bank (its
    number of rows) were given, ``normalize`` and ``options`` (the loss's name and
    options, e.g. ``{"loss": "supcon", "temperature": 0.1, ...}``, tensors by value)
    must agree, or every rank raises the same ``ValueError`` naming what differs. A
    rank that rejects its own input still joins that exchange
    (:func:`~nodulebench.distributed.abandon_gather`) before raising, so that the others
    raise a ``ValueError`` naming it instead of waiting for it. With ``gather_timeout``
    (seconds), a rank whose peers never arrive at the exchange raises ``TimeoutError``
    naming the loss and itself after that time.

    With a reference set ``ref_emb`` ``(M, D)`` or ``(M, V', D)`` and ``ref_labels``
    ``(M,)``, the anchors are the rows of ``embeddings`` and the columns are the
    reference rows (prepared the same way, in the anchors' dtype; gathered from every
    rank with ``gather_distributed=True``, after the same header exchange), none of
    them an anchor's self-pair.

    Raises:
        TypeError: non-tensor or non-floating ``embeddings``; non-integer ``labels``;
            missing ``labels`` where they are required; labels for only one of the
            anchors and the reference set; an ``options`` value that is not ``None``,
            a bool, an int, a float or a str (with ``gather_distributed``).
        ValueError: wrong ranks, an empty dimension, ``labels`` whose length differs
            from ``B``, or a reference set whose ``D`` differs from the anchors'; with
            ``gather_distributed``, ranks that disagree on the header or a rank that
            rejected its input.
    """
    try:
        _check_bool("normalize", normalize)
        _check_bool("gather_distributed", gather_distributed)
        if ref_emb is None and ref_labels is not None:
            raise TypeError(
                "ref_labels were given without ref_emb; pass the reference "
                "embeddings too, or neither"
            )
        if ref_emb is not None and (labels is None) != (ref_labels is None):
            given, missing = (
                ("labels", "ref_labels") if ref_labels is None else ("ref_labels", "labels")
            )
            raise TypeError(
                f"{given} were given but {missing} is None: a reference set "
                "needs labels for both the anchors and the reference rows"
            )
        rows, row_labels, leading_shape = _flatten(
            "embeddings", embeddings, labels, "labels", normalize=normalize
        )
        if labels is None and (labels_required or ref_emb is not None):
            raise TypeError("labels must be a (B,) integer tensor for this loss; got None")
    except (TypeError, ValueError):
        abandon_if_gathering(embeddings, gather_distributed, process_group)
        raise
    gather = gather_distributed and is_distributed(process_group)
    batch = embeddings.shape[0]
    views = embeddings.shape[1] if embeddings.ndim == 3 else 1
    agree = {
        **(options or {}),
        "normalize": normalize,
        "kind of labels": None if labels is None else "tensor",
        # A rank with a reference set would treat the others' batches as reference rows.
        "reference set": None if ref_emb is None else "ref_emb",
        "memory rows": None if memory is None else int(memory[0].shape[0]),
    }
    if ref_emb is not None:
        return _with_reference(
            rows,
            row_labels,
            leading_shape,
            embeddings,
            ref_emb,
            ref_labels,
            normalize=normalize,
            gather_distributed=gather_distributed,
            gather=gather,
            process_group=process_group,
            agree=agree,
            gather_timeout=gather_timeout,
        )
    # One exchange of the sizes and everything the ranks must agree on; checked locally
    # (and the identity) without a process group, so a bad option shows up in any run.
    sample_sizes = (
        gather_sizes(
            embeddings, process_group, agree=agree, name="embeddings", timeout=gather_timeout
        )
        if gather_distributed
        else (batch,)
    )
    first_sample = sum(sample_sizes[: get_rank(process_group)]) if gather else 0
    if row_labels is None:
        sample_labels = torch.arange(first_sample, first_sample + batch, device=rows.device)
        row_labels = sample_labels.repeat_interleave(views)
    columns, column_labels = rows, row_labels
    if gather:
        row_sizes = [size * views for size in sample_sizes]
        columns = all_gather_with_grad(rows, process_group, sizes=row_sizes)
        column_labels = all_gather_no_grad(row_labels, process_group, sizes=row_sizes)
    if memory is not None:
        memory_rows, memory_labels = memory
        columns = torch.cat((columns, memory_rows.to(columns.dtype)))
        column_labels = torch.cat((column_labels, memory_labels))
    return PreparedEmbeddings(
        rows,
        row_labels,
        leading_shape,
        embeddings,
        columns,
        column_labels,
        row_offset=first_sample * views,
        world_size=get_world_size(process_group) if gather else 1,
        group=process_group if gather else None,
    )


def abandon_if_gathering(
    embeddings: object, gather_distributed: object, process_group: ProcessGroup | None
) -> None:
    """Before re-raising a rejected input: meet the other ranks at the header exchange.

    They are on their way to it, so they fail now instead of waiting for this rank until
    the process group's timeout.
    """
    if isinstance(embeddings, torch.Tensor) and gather_distributed is True:
        abandon_gather(process_group, device=embeddings.device)


def _with_reference(
    rows: torch.Tensor,
    row_labels: torch.Tensor | None,
    leading_shape: tuple[int, ...],
    embeddings: torch.Tensor,
    ref_emb: torch.Tensor,
    ref_labels: torch.Tensor | None,
    *,
    normalize: bool,
    gather_distributed: bool,
    gather: bool,
    process_group: ProcessGroup | None,
    agree: Mapping[str, object],
    gather_timeout: float | None,
) -> PreparedEmbeddings:
    """The prepared anchors against a separate reference set (gathered if asked)."""
    assert row_labels is not None  # prepare_embeddings checked both label sets
    try:
        columns, column_labels, ref_shape = _flatten(
            "ref_emb",
            ref_emb,
            ref_labels,
            "ref_labels",
            normalize=normalize,
            dtype=rows.dtype,
        )
        if columns.shape[1] != rows.shape[1]:
            raise ValueError(
                f"ref_emb must have the embedding dimension D = {rows.shape[1]} of "
                f"embeddings {tuple(embeddings.shape)}; got shape {tuple(ref_emb.shape)}"
            )
        if columns.device != rows.device:
            raise ValueError(
                f"ref_emb must be on the device of embeddings ({rows.device}); got {columns.device}"
            )
    except (TypeError, ValueError):
        abandon_if_gathering(embeddings, gather_distributed, process_group)
        raise
    assert column_labels is not None
    # The reference rows are what is gathered: their sizes, and the agreement, as above.
    ref_sizes = (
        gather_sizes(
            columns.reshape(*ref_shape, -1),
            process_group,
            agree=agree,
            name="ref_emb",
            timeout=gather_timeout,
        )
        if gather_distributed
        else ()
    )
    if not gather:
        return PreparedEmbeddings(
            rows, row_labels, leading_shape, embeddings, columns, column_labels, reference=True
        )
    views = ref_shape[1] if len(ref_shape) == 2 else 1
    sizes = [size * views for size in ref_sizes]
    return PreparedEmbeddings(
        rows,
        row_labels,
        leading_shape,
        embeddings,
        columns=all_gather_with_grad(columns, process_group, sizes=sizes),
        column_labels=all_gather_no_grad(column_labels, process_group, sizes=sizes),
        world_size=get_world_size(process_group),
        group=process_group,
        reference=True,
    )


def _connected_zero(prepared: PreparedEmbeddings) -> torch.Tensor:
    # Each entry times 0 before the sum: the sum of a large float16 batch would overflow
    # to inf (and inf * 0 is NaN); a NaN or inf entry still gives NaN.
    return (prepared.source * 0.0).sum().to(prepared.rows.dtype)


class ReducedLoss(NamedTuple):
    """A reduced loss and the number of anchors that were excluded from it.

    ``excluded_anchors`` is a 0-dim int64 tensor, so that reducing needs no device
    synchronisation; read it with ``int()`` when needed.
    """

    loss: torch.Tensor
    excluded_anchors: torch.Tensor


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
        per_anchor: ``(N,)`` loss of each anchor; with ``counts``, ``(N,)`` or ``(N, K)``
            per-anchor sums of ``K`` parts of the loss.
        valid: ``(N,)`` bool, anchors that take part; the others get exactly 0 in
            ``"none"`` and are left out of ``"mean"`` and ``"sum"``.
        reduction: ``"mean"`` (over valid anchors), ``"sum"`` or ``"none"``.
        prepared: the prepared inputs (output shape, ranks).
        counts: optional number of terms in each sum, shaped like ``per_anchor``
            (triplet ``mining="all"``; the two parts of the pytorch-metric-learning
            contrastive form). Then ``"mean"`` is, summed over the parts,
            ``sum(per_anchor) / sum(counts)`` (0 for a part without terms) and
            ``"none"`` is, summed over the parts, ``per_anchor / counts`` (0 where
            ``counts`` is 0).

    Returns:
        The loss (scalar, or ``prepared.leading_shape`` for ``"none"``) in float32 or
        float64, and the number of invalid anchors. With no valid anchor (or no
        counted term) ``"mean"`` and ``"sum"`` give a zero still connected to the graph.
        For gathered inputs on :math:`W` ranks, ``"mean"`` is :math:`W` times this
        rank's sum over the *global* count (summed over ranks) and ``"sum"`` is
        :math:`W` times this rank's sum, so that the average over ranks (what DDP
        applies to gradients) is the single-process loss; ``"none"`` stays local and
        the excluded anchors are this rank's. Nothing here synchronises with the host.
    """
    keep = valid.reshape(valid.shape + (1,) * (per_anchor.ndim - 1))
    # torch.where, not a product: an invalid anchor's NaN/inf must not leak through.
    per_anchor = torch.where(keep, per_anchor, torch.zeros_like(per_anchor))
    excluded = (~valid).sum()
    if counts is not None:
        counts = torch.where(keep, counts, torch.zeros_like(counts)).to(per_anchor.dtype)
    if reduction == "none":
        if counts is not None:
            per_anchor = torch.where(counts > 0, per_anchor / counts.clamp(min=1), 0.0)
        per_anchor = per_anchor.reshape(per_anchor.shape[0], -1).sum(dim=1)
        return ReducedLoss(per_anchor.reshape(prepared.leading_shape), excluded)
    denominator = valid.sum() if counts is None else counts.sum(dim=0)
    if prepared.gathered:
        # Global count, so that every rank divides by the same number.
        denominator = sum_over_ranks(denominator, prepared.group)
    # Plus a zero built from every input entry: connected to the graph even without a
    # valid anchor, and NaN when an entry is NaN or infinite (never a silent 0).
    total = per_anchor.sum(dim=0) + _connected_zero(prepared)
    if prepared.gathered:
        # W * (local share): DDP divides by W; see nodulebench.distributed.
        total = total * prepared.world_size
    if reduction == "sum":
        return ReducedLoss(total.sum(), excluded)
    # With no valid anchor the total is that zero, and so is the mean.
    return ReducedLoss((total / denominator.clamp(min=1).to(total.dtype)).sum(), excluded)
