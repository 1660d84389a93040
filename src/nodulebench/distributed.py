r"""Process-group helpers and an exact, autograd-aware all-gather.

Contrastive losses need negatives from the whole global batch. Under data parallelism
(DDP launched by ``torchrun``) each rank ``r`` holds ``B_r`` local samples; a loss with
``gather_distributed=True`` gathers the embeddings of every rank with
:func:`all_gather_with_grad`, uses its *local* rows as anchors and the *global* batch as
columns, and reduces so that DDP's gradient averaging gives exactly the gradient of the
single-process loss on the concatenated batch.

Before a gather, :func:`gather_sizes` exchanges one small header per rank (the sizes,
and what the ranks must agree on, such as the loss's options) so that ranks whose calls
differ all raise the same error instead of one of them waiting forever;
:func:`abandon_gather` lets a rank that rejects its own input join that exchange.

Every helper works without an initialised process group: then there is one process,
of rank 0, and a gather returns its input unchanged.

**Why the gradient is exact.** Let the global loss be :math:`L = \frac{1}{V}\sum_i l_i`
over the :math:`V` valid anchors of the concatenated batch (:math:`V_r` of them on rank
:math:`r`, :math:`V = \sum_r V_r`). Rank :math:`r` returns

.. math::

    L_r = \frac{W}{V} \sum_{i \in \text{rank } r} l_i
    \quad\Longrightarrow\quad
    \frac{1}{W}\sum_r L_r = L.

Autograd on rank :math:`r` differentiates :math:`L_r` with respect to its local rows
directly (anchor path) and with respect to every rank's rows through the gathered
columns. The gather's backward all-reduces (sums) those column gradients over ranks and
keeps this rank's slice, so rank :math:`r` ends up with
:math:`g_r = \partial (\sum_s L_s) / \partial z_r`. DDP then averages parameter
gradients, :math:`\frac{1}{W}\sum_r J_r^\top g_r = J^\top \nabla_z \frac{1}{W}\sum_s L_s
= \nabla_\theta L`: the factor :math:`W` is the normalisation that cancels DDP's
:math:`1/W`, not a fudge, and it holds for uneven local batches because :math:`V` is
the global count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from nodulebench._gather_header import (
    MAX_NDIM,
    abandoned_header,
    agreed_fields,
    check_headers,
    encode_header,
)

# A runtime import (where available) lets the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
    "abandon_gather",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "gather_sizes",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "local_row_offset",
    "sum_over_ranks",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _check_group(group: ProcessGroup | None) -> None:
    if group is None:
        return
    if not dist.is_available() or not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed.ProcessGroup or None; got {type(group).__name__}"
        )


def get_rank(group: ProcessGroup | None = None) -> int:
    """This process's rank in ``group``; 0 without an initialised process group.

    Args:
        group: The process group; ``None`` means the default (world) group.

    Returns:
        The rank, in ``[0, get_world_size(group))``.

    Example:
        >>> from nodulebench.distributed import get_rank
        >>> get_rank()  # a plain, single-process run
        0
    """
    _check_group(group)
    return dist.get_rank(group) if _initialized() else 0


def get_world_size(group: ProcessGroup | None = None) -> int:
    """The number of processes in ``group``; 1 without an initialised process group.

    Args:
        group: The process group; ``None`` means the default (world) group.

    Returns:
        The world size, at least 1.

    Example:
        >>> from nodulebench.distributed import get_world_size
        >>> get_world_size()
        1
    """
    _check_group(group)
    return dist.get_world_size(group) if _initialized() else 1


def is_distributed(group: ProcessGroup | None = None) -> bool:
    """Whether a gather over ``group`` exchanges data with other processes.

    True when :mod:`torch.distributed` is available, its process group is initialised
    and ``group`` spans more than one process.

    Args:
        group: The process group; ``None`` means the default (world) group.

    Returns:
        ``False`` in a plain single-process run (the gathers are then identities).

    Example:
        >>> from nodulebench.distributed import is_distributed
        >>> is_distributed()
        False
    """
    return get_world_size(group) > 1


def _check_gatherable(name: str, tensor: Any) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if not 1 <= tensor.ndim <= MAX_NDIM:
        raise ValueError(
            f"{name} must have between 1 and {MAX_NDIM} dimensions (it is gathered along "
            f"dim 0); got shape {tuple(tensor.shape)}"
        )


def _exchange(
    header: torch.Tensor,
    group: ProcessGroup | None,
    timeout: float | None = None,
    what: str = "the gather",
) -> list[list[int]]:
    exchanged = [torch.empty_like(header) for _ in range(get_world_size(group))]
    if timeout is None:
        dist.all_gather(exchanged, header, group=group)
    else:
        start = time.monotonic()
        work = dist.all_gather(exchanged, header, group=group, async_op=True)
        try:
            work.wait(timeout=timedelta(seconds=timeout))
        except RuntimeError as error:
            waited = time.monotonic() - start
            if waited < 0.9 * timeout:  # not a timeout: a peer died, say
                raise
            raise TimeoutError(
                f"{what}: rank {get_rank(group)} of {get_world_size(group)} waited "
                f"{waited:.1f} s (gather_timeout={timeout!r}) at the header exchange "
                "before the gather and at least one rank never arrived: it skipped the "
                "call, raised before it, or runs with gather_distributed=False. The "
                "process group is left with a pending collective; treat this as fatal"
            ) from error
    rows: list[list[int]] = torch.stack(exchanged).tolist()
    return rows


def check_timeout(name: str, value: object) -> None:
    """Raise unless ``value`` is ``None`` or a finite number of seconds ``> 0``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None; got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0 or None; got {value!r}")


def gather_sizes(
    tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    *,
    agree: Mapping[str, object] | None = None,
    name: str = "tensor",
    timeout: float | None = None,
) -> tuple[int, ...]:
    """The first-dimension size of ``tensor`` on every rank (a collective call).

    Every rank of ``group`` must call it. In the same single exchange it checks that
    all ranks agree on the trailing shape, the dtype and every value in ``agree``, so
    that a later gather cannot fail obscurely, hang or mix inputs that mean different
    things: on a mismatch every rank raises the same ``ValueError``.

    Args:
        tensor: (B_r, ...) this rank's tensor; ``B_r`` may differ between ranks.
        group: The process group; ``None`` means the default (world) group.
        agree: Up to 16 named values (``None``, bool, int, float, str or tensor) that
            must be equal on every rank, such as a loss's name and options; ints equal
            to floats count as equal, a one-element tensor counts as its number (a host
            synchronisation), a larger one by its shape, dtype and contents. Compared
            through a 64-bit digest of their text; the first 32 bytes of
            ``name=value`` travel for the error message.
        name: What to call ``tensor`` in error messages.
        timeout: Seconds to wait for the other ranks at the exchange before raising
            ``TimeoutError`` (naming ``agree["loss"]`` if given and this rank), instead
            of waiting for the process group's timeout; ``None`` waits for that.

    Returns:
        ``(B_0, ..., B_{W-1})``; ``(B,)`` without an initialised process group (after
        checking ``tensor`` and ``agree`` locally).

    Raises:
        TypeError: If ``tensor`` is not a tensor or a value in ``agree`` has another type.
        TimeoutError: If ``timeout`` passed before every rank arrived (a rank skipped
            the call); the process group then holds a pending collective: fatal.
        ValueError: If the ranks' tensors differ in dtype or in anything but the first
            dimension, or a value in ``agree`` differs (raised on every rank, naming
            each rank's shape, dtype or value), or ``agree`` has more than 16 fields.

    Example:
        >>> import torch
        >>> from nodulebench.distributed import gather_sizes
        >>> gather_sizes(torch.zeros(5, 3), agree={"temperature": 0.1})
        (5,)
    """
    _check_gatherable(name, tensor)
    check_timeout("timeout", timeout)
    fields = agreed_fields(agree)
    if not is_distributed(group):
        return (int(tensor.shape[0]),)
    local = torch.tensor(encode_header(tensor, fields), dtype=torch.int64, device=tensor.device)
    what = f"loss {agree['loss']!r}" if agree is not None and "loss" in agree else "gather_sizes"
    rows = _exchange(local, group, timeout, what)
    check_headers(name, rows)
    return tuple(int(row[2]) for row in rows)


def abandon_gather(
    group: ProcessGroup | None = None, *, device: torch.device | str = "cpu"
) -> None:
    """Meet the other ranks' :func:`gather_sizes` as a rank that cannot take part.

    Call it, then raise your own error, when this rank rejects its input just before a
    gather that the other ranks are about to start. Their :func:`gather_sizes` then
    raises a ``ValueError`` naming this rank, instead of waiting for it until the
    process group's timeout. A collective call, paired with the others' ``gather_sizes``;
    nothing happens without an initialised process group.

    Args:
        group: The process group; ``None`` means the default (world) group.
        device: Where the exchanged header lives: the device of the tensor this rank
            would have gathered (a CUDA device under NCCL).

    Example:
        >>> from nodulebench.distributed import abandon_gather, is_distributed
        >>> is_distributed()  # one process: there are no peers to tell
        False
        >>> abandon_gather()  # so it returns at once
    """
    if not is_distributed(group):
        return
    _exchange(torch.tensor(abandoned_header(), dtype=torch.int64, device=device), group)


def _resolve_sizes(
    tensor: torch.Tensor, group: ProcessGroup | None, sizes: Sequence[int] | None
) -> tuple[int, ...]:
    if sizes is None:
        return gather_sizes(tensor, group)
    resolved = tuple(int(s) for s in sizes)
    rank, world_size = get_rank(group), get_world_size(group)
    if len(resolved) != world_size or resolved[rank] != tensor.shape[0]:
        raise ValueError(
            f"sizes must list every rank's first dimension ({world_size} entries, entry "
            f"{rank} equal to this rank's {tensor.shape[0]} rows); got {resolved}"
        )
    return resolved


def _gather_padded(
    tensor: torch.Tensor, sizes: tuple[int, ...], group: ProcessGroup | None
) -> torch.Tensor:
    """Concatenate every rank's rows: pad to the largest size, all-gather, trim."""
    max_rows = max(sizes)
    padded = tensor.new_zeros((max_rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded, group=group)
    return torch.cat([buffer[:rows] for buffer, rows in zip(buffers, sizes, strict=True)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank's copy."""

    @staticmethod
    def forward(
        ctx: Any,
        tensor: torch.Tensor,
        sizes: tuple[int, ...],
        rank: int,
        group: ProcessGroup | None,
    ) -> torch.Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.rows = sizes[rank]
        ctx.group = group
        return _gather_padded(tensor.detach(), sizes, group)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Every rank's loss may depend on this rank's rows through its gathered copy:
        # the total derivative is the sum over ranks of the slice that belongs here.
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.rows], None, None, None


def all_gather_with_grad(
    tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    *,
    sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    r"""Concatenate ``tensor`` over the ranks of ``group`` along dim 0, with autograd.

    The first dimension may differ between ranks (rows are padded to the largest size
    for the exchange, then trimmed). In the backward pass the incoming gradient of the
    gathered tensor is all-reduced (summed) over ranks and this rank's slice is
    returned: every rank's output may depend on this rank's rows, so the gradient of the
    sum of all ranks' outputs with respect to them is the sum of the slices. With a loss
    normalised as in the module docstring this gives DDP exactly the single-process
    gradient. A collective call in both passes: every rank of ``group`` must call it,
    and must run the backward pass.

    Args:
        tensor: (B_r, ...) this rank's rows; the trailing shape must agree on all ranks.
        group: The process group; ``None`` means the default (world) group.
        sizes: Every rank's first dimension, when already known from
            :func:`gather_sizes` on a tensor with the same first dimension on every
            rank (saves one collective); ``None`` exchanges them.

    Returns:
        (sum_r B_r, ...) the rows of rank 0, then rank 1, ...; ``tensor`` itself when
        :func:`is_distributed` is false.

    Raises:
        ValueError: If the ranks disagree on the trailing shape or the dtype, or
            ``sizes`` does not match this rank's tensor.

    Example:
        >>> import torch
        >>> from nodulebench.distributed import all_gather_with_grad
        >>> z = torch.randn(4, 8, requires_grad=True)
        >>> all_gather_with_grad(z).shape  # single process: the identity
        torch.Size([4, 8])
    """
    _check_gatherable("tensor", tensor)
    if not is_distributed(group):
        return tensor
    resolved = _resolve_sizes(tensor, group, sizes)
    gathered: torch.Tensor = _AllGatherWithGrad.apply(  # type: ignore[no-untyped-call]
        tensor, resolved, get_rank(group), group
    )
    return gathered


def all_gather_no_grad(
    tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    *,
    sizes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Concatenate ``tensor`` over the ranks of ``group`` along dim 0, without autograd.

    For tensors no gradient flows through, such as integer labels. The first dimension
    may differ between ranks. A collective call: every rank of ``group`` must call it.

    Args:
        tensor: (B_r, ...) this rank's rows, any dtype the backend supports.
        group: The process group; ``None`` means the default (world) group.
        sizes: Every rank's first dimension, as for :func:`all_gather_with_grad`.

    Returns:
        (sum_r B_r, ...) detached from the graph; ``tensor.detach()`` when
        :func:`is_distributed` is false.

    Raises:
        ValueError: If the ranks disagree on the trailing shape or the dtype, or
            ``sizes`` does not match this rank's tensor.

    Example:
        >>> import torch
        >>> from nodulebench.distributed import all_gather_no_grad
        >>> all_gather_no_grad(torch.tensor([0, 1, 1]))
        tensor([0, 1, 1])
    """
    _check_gatherable("tensor", tensor)
    if not is_distributed(group):
        return tensor.detach()
    resolved = _resolve_sizes(tensor, group, sizes)
    with torch.no_grad():
        return _gather_padded(tensor.detach(), resolved, group)


def local_row_offset(tensor: torch.Tensor, group: ProcessGroup | None = None) -> int:
    """The global index of this rank's first row in the gathered tensor.

    Equals ``sum(gather_sizes(tensor, group)[:get_rank(group)])``: a collective call.

    Args:
        tensor: (B_r, ...) this rank's rows.
        group: The process group; ``None`` means the default (world) group.

    Returns:
        0 on rank 0 and without an initialised process group.

    Example:
        >>> import torch
        >>> from nodulebench.distributed import local_row_offset
        >>> local_row_offset(torch.zeros(3, 2))
        0
    """
    sizes = gather_sizes(tensor, group)
    return sum(sizes[: get_rank(group)])


def sum_over_ranks(tensor: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks of ``group``, without autograd.

    For counts that a normalisation needs globally, such as the number of valid anchors.
    A collective call: every rank of ``group`` must call it, with the same shape.

    Args:
        tensor: Any shape; the input is left unchanged.
        group: The process group; ``None`` means the default (world) group.

    Returns:
        A new detached tensor; a detached copy of ``tensor`` when :func:`is_distributed`
        is false.

    Example:
        >>> import torch
        >>> from nodulebench.distributed import sum_over_ranks
        >>> sum_over_ranks(torch.tensor(3))
        tensor(3)
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    total = tensor.detach().clone(memory_format=torch.contiguous_format)
    if is_distributed(group):
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total
