r"""Dense definitions of the two-tower losses (the ``"reference"`` backend): ``B x B`` logits.

Both take *prepared* towers: ``image`` and ``text`` of shape ``(N, D)``, row ``i`` of one
paired with row ``i`` of the other, already normalized where the loss normalizes and
upcast to float32 or float64. ``row_range=(start, stop)`` makes only the pairs
``start:stop`` anchors, compared with every row of the other tower (a distributed loss
passes the gathered towers and its own rows); ``None`` means every pair.

Each returns ``(loss, valid)`` of shape ``(A,)`` like the other per-anchor functions;
every anchor of a two-tower loss is valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodulebench.kernels._tiling import check_row_range

__all__ = ["clip_reference", "siglip_reference"]


def clip_reference(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    scale: torch.Tensor,
    row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Symmetric InfoNCE per pair: the mean of its image->text and text->image terms.

    With logits :math:`L_{ij} = s\, x_i \cdot y_j`,
    :math:`\ell_i = \tfrac12 (\operatorname{LSE}_j L_{ij} - L_{ii})
    + \tfrac12 (\operatorname{LSE}_k L_{ki} - L_{ii})`.
    """
    start, stop = check_row_range(row_range, image.shape[0])
    targets = torch.arange(start, stop, device=image.device)
    image_to_text = F.cross_entropy(scale * image[start:stop] @ text.T, targets, reduction="none")
    text_to_image = F.cross_entropy(scale * text[start:stop] @ image.T, targets, reduction="none")
    loss = 0.5 * (image_to_text + text_to_image)
    return loss, torch.ones_like(loss, dtype=torch.bool)


def siglip_reference(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    scale: torch.Tensor,
    bias: torch.Tensor,
    row_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Pairwise sigmoid loss per image: :math:`-\sum_j \log \sigma(z_{ij}(s\,x_i \cdot y_j + b))`.

    :math:`z_{ij} = +1` for the pair's own text (:math:`j = i`), :math:`-1` otherwise.
    """
    start, stop = check_row_range(row_range, image.shape[0])
    logits = scale * image[start:stop] @ text.T + bias
    own = (
        torch.arange(start, stop, device=image.device)[:, None]
        == torch.arange(text.shape[0], device=image.device)[None, :]
    )
    signs = torch.where(own, 1.0, -1.0).to(logits.dtype)
    loss = -F.logsigmoid(signs * logits).sum(dim=1)
    return loss, torch.ones_like(loss, dtype=torch.bool)
