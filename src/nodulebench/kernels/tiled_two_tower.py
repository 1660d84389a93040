r"""Tiled two-tower losses (CLIP InfoNCE, SigLIP) in :math:`O(N D + b^2)` memory.

The towers ``image`` :math:`x` and ``text`` :math:`y` have shape ``(N, D)``; pair
:math:`i` is :math:`(x_i, y_i)`. The dot products :math:`d_{ij} = x_i \cdot y_j` are
visited in ``b x b`` tiles and never held whole, in the forward or the backward pass.
The scale :math:`s` (and SigLIP's bias :math:`b`) are 0-dim tensors that receive exact
gradients.

**InfoNCE** (Radford et al. 2021). With :math:`L_{ij} = s\,d_{ij}`,

.. math::

    \ell_i = \tfrac12\big(\operatorname{LSE}_j L_{ij} + \operatorname{LSE}_k L_{ki}\big)
        - L_{ii}.

Each tile folds its row log-sum-exps into the image statistics (online, over column
tiles) and its column log-sum-exps into the text statistics (over row tiles); only
these :math:`O(N)` values are saved. The backward pass recomputes each tile's
:math:`W_{ij} = \tfrac12 (g_i P_{ij} + g_j Q_{ij})` with the row and column softmaxes
:math:`P, Q` and upstream gradients :math:`g`, and accumulates
:math:`\partial/\partial x = s (W y - g \odot y)`,
:math:`\partial/\partial y = s (W^\top x - g \odot x)` and
:math:`\partial/\partial s = \sum_{ij} W_{ij} d_{ij} - \sum_i g_i d_{ii}`.

**SigLIP** (Zhai et al. 2023). With :math:`u_{ij} = s\,d_{ij} + b` and
:math:`z_{ij} = +1` on the own pair, :math:`-1` elsewhere,
:math:`\ell_i = -\sum_j \log\sigma(z_{ij} u_{ij})`, a plain sum per image row; with
:math:`W_{ij} = -g_i z_{ij} \sigma(-z_{ij} u_{ij})` the gradients are
:math:`s W y`, :math:`s W^\top x`, :math:`\sum W_{ij} d_{ij}` and :math:`\sum W_{ij}`.

With ``row_range=(start, stop)`` only the pairs ``start:stop`` are anchors (a
distributed loss's own pairs among the gathered towers): InfoNCE visits the tiles that
touch an anchor row or an anchor column, SigLIP the anchor rows against every column.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from nodulebench._validation import check_ndim
from nodulebench.kernels._tiling import (
    TILE_EDGE,
    ShiftedLse,
    check_row_range,
    eager_under_compile,
    row_blocks,
)

__all__ = ["clip_tiled", "siglip_tiled"]

_Blocks = list[tuple[int, int, bool]]


def _blocks(n: int, block_size: int, anchors: tuple[int, int]) -> _Blocks:
    """``(start, stop, is_anchor)`` blocks covering ``0:n``, none straddling the anchors."""
    a0, a1 = anchors
    return (
        [(r0, r1, False) for r0, r1 in row_blocks(a0, block_size)]
        + [(r0, r1, True) for r0, r1 in row_blocks(a1, block_size, a0)]
        + [(r0, r1, False) for r0, r1 in row_blocks(n, block_size, a1)]
    )


def _fold_lse(running: torch.Tensor, tile: torch.Tensor, dim: int) -> None:
    """Online log-sum-exp: fold the tile's LSE along ``dim`` into ``running`` in place."""
    running.copy_(torch.logaddexp(running, torch.logsumexp(tile, dim=dim)))


def _own_pair_signs(r0: int, r1: int, c0: int, c1: int, like: torch.Tensor) -> torch.Tensor:
    """SigLIP's labels of a tile: +1 where global row equals global column, else -1."""
    rows = torch.arange(r0, r1, device=like.device)[:, None]
    cols = torch.arange(c0, c1, device=like.device)[None, :]
    return torch.where(rows == cols, 1.0, -1.0).to(like.dtype)


class _ClipTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        block_size: int,
        row_range: tuple[int, int],
    ) -> torch.Tensor:
        a0, a1 = row_range
        blocks = _blocks(image.shape[0], block_size, row_range)
        # Each direction's LSE is kept relative to its running maximum, and the own pair's
        # logit is read from the same tile entry (see ShiftedLse): a loss is a sum of
        # small non-negative terms, exactly 0 where the own pair is the only candidate.
        image_stats = ShiftedLse(a1 - a0, image)
        text_stats = ShiftedLse(a1 - a0, image)
        own = torch.empty(a1 - a0, dtype=image.dtype, device=image.device)
        for r0, r1, row_anchor in blocks:
            for c0, c1, col_anchor in blocks:
                if not (row_anchor or col_anchor):
                    continue
                logits = (image[r0:r1] @ text[c0:c1].T).mul_(scale)
                if row_anchor:
                    image_stats.fold(slice(r0 - a0, r1 - a0), logits, 1)
                if col_anchor:
                    text_stats.fold(slice(c0 - a0, c1 - a0), logits, 0)
                lo, hi = max(r0, c0), min(r1, c1)
                if row_anchor and col_anchor and lo < hi:
                    index = torch.arange(lo, hi, device=image.device)
                    own[lo - a0 : hi - a0] = logits[index - r0, index - c0]
        # own <= peak (it is one of the entries); the difference of two close numbers
        # is exact, so a single candidate gives exactly 0.
        loss = 0.5 * (
            (image_stats.shifted() - (own - image_stats.peak))
            + (text_stats.shifted() - (own - text_stats.peak))
        )
        # The backward pass forms exp((L - peak) - shifted), not exp(L - lse): with logits
        # of 1e9 the sum peak + shifted would round away what the shift keeps.
        ctx.save_for_backward(
            image,
            text,
            scale,
            image_stats.peak,
            image_stats.shifted(),
            text_stats.peak,
            text_stats.shifted(),
        )
        ctx.options = (block_size, row_range)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image, text, scale, peak_image, shift_image, peak_text, shift_text = ctx.saved_tensors
        block_size, row_range = ctx.options
        a0, a1 = row_range
        half = 0.5 * grad_loss
        # Embedding gradients are accumulated without the factor s, applied once at the end.
        grad_image, grad_text = torch.zeros_like(image), torch.zeros_like(text)
        grad_scale = torch.zeros((), dtype=image.dtype, device=image.device)
        blocks = _blocks(image.shape[0], block_size, row_range)
        for r0, r1, row_anchor in blocks:
            for c0, c1, col_anchor in blocks:
                if not (row_anchor or col_anchor):
                    continue
                dots = image[r0:r1] @ text[c0:c1].T
                logits = dots * scale
                weights = torch.zeros_like(logits)
                if row_anchor:
                    rows = slice(r0 - a0, r1 - a0)
                    shifted = (logits - peak_image[rows, None]) - shift_image[rows, None]
                    weights.add_(torch.exp(shifted) * half[rows, None])
                if col_anchor:
                    cols = slice(c0 - a0, c1 - a0)
                    shifted = (logits - peak_text[None, cols]) - shift_text[None, cols]
                    weights.add_(torch.exp(shifted) * half[None, cols])
                grad_image[r0:r1].addmm_(weights, text[c0:c1])
                grad_text[c0:c1].addmm_(weights.T, image[r0:r1])
                grad_scale.add_((weights * dots).sum())
        # The own pair's logit -s x_i . y_i of every anchor.
        grad_image[a0:a1].sub_(grad_loss[:, None] * text[a0:a1])
        grad_text[a0:a1].sub_(grad_loss[:, None] * image[a0:a1])
        grad_scale.sub_((grad_loss * (image[a0:a1] * text[a0:a1]).sum(dim=1)).sum())
        return grad_image.mul_(scale), grad_text.mul_(scale), grad_scale, None, None


class _SigLipTiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        block_size: int,
        row_range: tuple[int, int],
    ) -> torch.Tensor:
        a0, a1 = row_range
        loss = torch.zeros(a1 - a0, dtype=image.dtype, device=image.device)
        for r0, r1 in row_blocks(a1, block_size, a0):
            for c0, c1 in row_blocks(text.shape[0], block_size):
                logits = (image[r0:r1] @ text[c0:c1].T).mul_(scale).add_(bias)
                signs = _own_pair_signs(r0, r1, c0, c1, logits)
                loss[r0 - a0 : r1 - a0].sub_(F.logsigmoid(logits.mul_(signs)).sum(dim=1))
        ctx.save_for_backward(image, text, scale, bias)
        ctx.options = (block_size, row_range)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        image, text, scale, bias = ctx.saved_tensors
        block_size, (a0, a1) = ctx.options
        grad_image, grad_text = torch.zeros_like(image), torch.zeros_like(text)
        grad_scale = torch.zeros((), dtype=image.dtype, device=image.device)
        grad_bias = torch.zeros_like(grad_scale)
        for r0, r1 in row_blocks(a1, block_size, a0):
            for c0, c1 in row_blocks(text.shape[0], block_size):
                dots = image[r0:r1] @ text[c0:c1].T
                signs = _own_pair_signs(r0, r1, c0, c1, dots)
                # d/du of -log sigmoid(z u) is -z sigmoid(-z u).
                weights = torch.sigmoid(-signs * (dots * scale + bias)).mul_(signs).neg_()
                weights.mul_(grad_loss[r0 - a0 : r1 - a0, None])
                grad_image[r0:r1].addmm_(weights, text[c0:c1])
                grad_text[c0:c1].addmm_(weights.T, image[r0:r1])
                grad_scale.add_((weights * dots).sum())
                grad_bias.add_(weights.sum())
        return (grad_image.mul_(scale), grad_text.mul_(scale), grad_scale, grad_bias, None, None)


def _check_towers(
    image: torch.Tensor,
    text: torch.Tensor,
    block_size: int | None,
    scalars: dict[str, torch.Tensor],
) -> int:
    """Check prepared towers and 0-dim scalars; return the tile edge."""
    check_ndim("image", image, (2,), "(N, D)")
    check_ndim("text", text, (2,), "(N, D)")
    if image.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"image must be float32 or float64 (prepared inputs are upcast); got {image.dtype}"
        )
    if text.shape != image.shape or text.dtype != image.dtype or text.device != image.device:
        raise ValueError(
            f"text must match image's shape {tuple(image.shape)}, dtype {image.dtype} and "
            f"device {image.device}; got {tuple(text.shape)}, {text.dtype}, {text.device}"
        )
    for name, value in scalars.items():
        if not isinstance(value, torch.Tensor) or value.shape != ():
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a 0-dim tensor; got {got}")
        if value.dtype != image.dtype or value.device != image.device:
            raise ValueError(
                f"{name} must have image's dtype {image.dtype} and device "
                f"{image.device}; got {value.dtype} on {value.device}"
            )
    if block_size is None:
        return max(1, min(image.shape[0], TILE_EDGE))
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int or None; got {block_size!r}")
    return block_size


@eager_under_compile
def clip_tiled(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    scale: torch.Tensor,
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Symmetric InfoNCE per pair in :math:`O(N D + b^2)` memory, forward and backward.

    Args:
        image: Prepared image tower :math:`x`, shape ``(N, D)``, float32 or float64.
        text: Prepared text tower :math:`y`, shape ``(N, D)``, same dtype and device.
        scale: The logit scale :math:`s` (``1 / temperature``, or ``exp(logit_scale)``),
            a 0-dim tensor of the towers' dtype; it gets a gradient if it requires one.
        block_size: Edge ``b`` of the ``b x b`` tiles; ``None`` picks ``min(N, 1024)``.
        row_range: ``(start, stop)``: only pairs ``start:stop`` are anchors, against
            every row of the other tower; ``None`` means every pair.

    Returns:
        ``(loss, valid)`` of shape ``(A,)`` (``A`` anchors): the per-pair loss (see the
        module docstring) and an all-True mask.

    Example:
        >>> x = torch.eye(2)
        >>> loss, _ = clip_tiled(x, x, scale=torch.tensor(2.0))
        >>> [round(v, 4) for v in loss.tolist()]  # log(1 + e^-2)
        [0.1269, 0.1269]
    """
    edge = _check_towers(image, text, block_size, {"scale": scale})
    anchors = check_row_range(row_range, image.shape[0])
    loss: torch.Tensor = _ClipTiledFunction.apply(  # type: ignore[no-untyped-call]
        image, text, scale, edge, anchors
    )
    return loss, torch.ones_like(loss, dtype=torch.bool)


@eager_under_compile
def siglip_tiled(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    scale: torch.Tensor,
    bias: torch.Tensor,
    block_size: int | None = None,
    row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SigLIP's pairwise sigmoid loss per image row in :math:`O(N D + b^2)` memory.

    Args:
        image: Prepared image tower :math:`x`, shape ``(N, D)``, float32 or float64.
        text: Prepared text tower :math:`y`, shape ``(N, D)``, same dtype and device.
        scale: The logit scale :math:`s = e^{t'}`, a 0-dim tensor of the towers' dtype.
        bias: The logit bias :math:`b`, a 0-dim tensor of the towers' dtype.
        block_size: Edge ``b`` of the ``b x b`` tiles; ``None`` picks ``min(N, 1024)``.
        row_range: ``(start, stop)``: only images ``start:stop`` are anchors, against
            every text; ``None`` means every image.

    Returns:
        ``(loss, valid)`` of shape ``(A,)``: :math:`\ell_i = -\sum_j \log\sigma(z_{ij}
        u_{ij})` and an all-True mask. Their mean over all images is the SigLIP loss.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> loss, _ = siglip_tiled(x, x, scale=torch.tensor(10.0), bias=torch.tensor(-5.0))
        >>> [round(v, 4) for v in loss.tolist()]  # 2 log(1 + e^-5)
        [0.0134, 0.0134]
    """
    edge = _check_towers(image, text, block_size, {"scale": scale, "bias": bias})
    anchors = check_row_range(row_range, image.shape[0])
    loss: torch.Tensor = _SigLipTiledFunction.apply(  # type: ignore[no-untyped-call]
        image, text, scale, bias, edge, anchors
    )
    return loss, torch.ones_like(loss, dtype=torch.bool)
