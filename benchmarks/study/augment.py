"""Views for contrastive training: random flips and 90-degree rotations.

The eight symmetries of the square only permute pixels, so they leave every generative
factor of a nodule intact — size, shape, lobulation, spiculation, margin, texture,
attenuation, calcification, background and acquisition — except its orientation (and the
direction of its position offset), which are uniform nuisances that the study never ties
to the label. Intensity, crop or blur augmentations would change margin, noise or size,
the very factors under study, so they are left out on purpose.

The two views of a multi-view loss are two *rescans* of the nodule (the generator's
``render(..., rescan=k)``: the same object under independent acquisition noise), each under
a random symmetry (:func:`rescan_views`): symmetries alone would give views that carry the
same noise, pixel for pixel, so telling instances apart would need no semantics.

Volumes ``(D, H, W)`` get the same eight in-plane symmetries, applied to every axial
slice alike (the H and W axes); the depth axis is left alone, because slice thickness
makes it a different axis from the in-plane ones.
"""

from __future__ import annotations

import torch


def dihedral_views(images: torch.Tensor, n_views: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``n_views`` randomly flipped / rotated copies of each image or volume.

    Args:
        images: ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes, with ``H == W``;
            a view is one of the eight symmetries of the last two axes.
        n_views: views per image.
        generator: the source of randomness (CPU generator), so runs are reproducible.

    Returns:
        ``(B, n_views, *images.shape[1:])``.
    """
    variants = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    variants += [v.flip(-1) for v in variants]
    stacked = torch.stack(variants, dim=1)  # (B, 8, C, [D,] H, W)
    choice = torch.randint(0, 8, (images.shape[0], n_views), generator=generator)
    index = choice.to(images.device).view(*choice.shape, *[1] * (images.ndim - 1))
    return torch.gather(stacked, 1, index.expand(-1, -1, *images.shape[1:]))


def rescan_views(
    rescans: torch.Tensor, index: torch.Tensor, n_views: int, generator: torch.Generator
) -> torch.Tensor:
    """``(B, n_views, ...)``: rescans ``1..n_views`` of images ``index``, each under a symmetry.

    Raises:
        ValueError: fewer rescans than views.
    """
    if rescans.shape[0] < n_views:
        raise ValueError(
            f"a {n_views}-view loss needs {n_views} rescans of the training set; got "
            f"{rescans.shape[0]}"
        )
    return torch.cat(
        [dihedral_views(rescans[v][index], 1, generator) for v in range(n_views)], dim=1
    )
