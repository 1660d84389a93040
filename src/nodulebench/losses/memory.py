"""A cross-batch memory: the last embeddings and labels, as extra candidates of a pairwise loss.

XBM (Wang et al., Cross-Batch Memory for Embedding Learning, CVPR 2020) and MoCo's queue
keep the embeddings of recent batches so that each anchor meets many more candidates than
one batch holds. :class:`CrossBatchMemory` wraps any of our pairwise losses: the anchors
are the current batch, their candidates are the other rows of the batch (as without the
memory) and the remembered rows of earlier batches, which carry no gradient. After the
loss, the batch's prepared rows (normalized if the loss normalizes) replace the oldest
ones. With ``gather_distributed=True`` on the wrapped loss, the batch is gathered from
every rank and the gathered batch is enqueued once, identically on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nodulebench._validation import check_int
from nodulebench.losses._declaration import compute_prepared
from nodulebench.losses._inputs import abandon_if_gathering
from nodulebench.losses.modules import PairwiseLoss

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(torch.nn.Module):
    """A first-in first-out memory of the last ``memory_size`` embeddings and labels.

    Args:
        loss: the pairwise loss to feed (e.g. ``SupConLoss()``); its options (``normalize``,
            ``reduction``, ``backend``, ``gather_distributed``) apply as they are.
        embedding_size: ``D``, the width of the embeddings.
        memory_size: ``K``, how many rows (samples x views) of *earlier* batches it
            remembers; the current batch is compared too and not counted.
            pytorch-metric-learning's ``memory_size`` counts it: theirs is ``K`` plus
            the rows of one batch (see :doc:`/migration`).
        dtype: dtype of the stored rows (float32 by default).

    Attributes:
        embeddings: ``(K, D)`` buffer of remembered rows, oldest overwritten first.
        labels: ``(K,)`` int64 buffer of their labels.
        filled: how many rows of the buffers hold remembered rows.

    The buffers and the write position are in ``state_dict``, so a checkpoint resumes
    with the same memory.

    Example:
        >>> from nodulebench import SupConLoss
        >>> memory = CrossBatchMemory(SupConLoss(), embedding_size=2, memory_size=4)
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> first = memory(z, torch.tensor([0, 0, 1, 1]))
        >>> second = memory(z.flip(0), torch.tensor([1, 1, 0, 0]))
        >>> print(memory.filled, f"{first.item():.4f}", f"{second.item():.4f}")
        4 0.0638 1.5872
    """

    embeddings: torch.Tensor
    labels: torch.Tensor

    def __init__(
        self,
        loss: PairwiseLoss,
        embedding_size: int,
        memory_size: int = 1024,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(loss, PairwiseLoss):
            raise TypeError(
                "loss must be one of the pairwise losses (a PairwiseLoss, e.g. "
                f"SupConLoss()); got {type(loss).__name__}"
            )
        check_int("embedding_size", embedding_size, 1)
        check_int("memory_size", memory_size, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        self.loss = loss
        self.register_buffer("embeddings", torch.zeros(memory_size, embedding_size, dtype=dtype))
        self.register_buffer("labels", torch.zeros(memory_size, dtype=torch.int64))
        # Kept on the host: the sizes of the batches are known there, so reading the
        # memory never waits for the device.
        self.filled = 0
        self._position = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The wrapped loss of ``embeddings`` ``(B, D)`` / ``(B, V, D)`` with the memory.

        Then the batch (gathered, if the loss gathers) joins the memory.
        """
        try:
            self._check_batch(embeddings, labels)
        except (TypeError, ValueError):
            options = self.loss.options
            abandon_if_gathering(embeddings, options.gather_distributed, options.process_group)
            raise
        memory = (self.embeddings[: self.filled], self.labels[: self.filled])
        result, prepared = compute_prepared(self.loss.options, embeddings, labels, memory=memory)
        batch = prepared.columns.shape[0] - self.filled
        self._enqueue(prepared.columns[:batch].detach(), prepared.column_labels[:batch])
        return self.loss._record(result)

    def _check_batch(self, embeddings: object, labels: object) -> None:
        if not isinstance(embeddings, torch.Tensor) or embeddings.shape[-1:] != (
            self.embeddings.shape[1],
        ):
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else None
            raise ValueError(
                f"embeddings must have D = embedding_size = "
                f"{self.embeddings.shape[1]} features; got shape {shape}"
            )
        if labels is None:
            raise TypeError(
                "labels must be a (B,) integer tensor: remembered rows need "
                "labels to be positives or negatives; got None"
            )

    def _enqueue(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        size = self.embeddings.shape[0]
        rows, labels = rows[-size:], labels[-size:]  # a batch larger than the memory
        index = (torch.arange(rows.shape[0], device=rows.device) + self._position) % size
        with torch.no_grad():
            self.embeddings.index_copy_(
                0, index.to(self.embeddings.device), rows.to(self.embeddings)
            )
            self.labels.index_copy_(0, index.to(self.labels.device), labels.to(self.labels))
        self._position = (self._position + rows.shape[0]) % size
        self.filled = min(self.filled + rows.shape[0], size)

    def reset(self) -> None:
        """Forget every remembered row."""
        self.filled = 0
        self._position = 0

    def get_extra_state(self) -> dict[str, int]:
        """The write position and fill level, saved in ``state_dict``."""
        return {"filled": self.filled, "position": self._position}

    def set_extra_state(self, state: Any) -> None:
        """Restore the write position and fill level from ``state_dict``.

        Raises:
            TypeError: ``state`` is not a mapping with int ``filled`` and ``position``.
            ValueError: values this memory cannot hold: ``filled`` outside
                ``[0, memory_size]``, ``position`` outside ``[0, memory_size)``, or a
                position other than ``filled`` while the memory is not full (it fills
                from row 0).
        """
        size = self.embeddings.shape[0]
        if not isinstance(state, Mapping) or not {"filled", "position"} <= set(state):
            raise TypeError(
                "state must be a mapping with 'filled' and 'position' (get_extra_state's "
                f"output); got {state!r}"
            )
        filled = check_int("state['filled']", state["filled"], 0, size)
        position = check_int("state['position']", state["position"], 0, size - 1)
        if filled < size and position != filled:
            raise ValueError(
                f"state['position'] must equal state['filled'] = {filled} while the memory "
                f"of {size} rows is not full (it fills from row 0); got {position}"
            )
        self.filled = filled
        self._position = position

    def extra_repr(self) -> str:
        """Memory size, width and fill level."""
        size, width = self.embeddings.shape
        return f"memory_size={size}, embedding_size={width}, filled={self.filled}"
