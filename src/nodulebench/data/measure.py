"""Recover factors from an image and its masks: the closed loop of the generator.

Every factor the generator sets in physical units can be measured back:

- ``diameter_mm``: the longest (Feret) diameter of the nodule *body* (nodule mask minus
  spicules), the LIDC convention, from projections at 1 degree steps; pixel centres span
  one pixel less than the object, so one pixel is added.
- ``equivalent_diameter_mm``: major axis ``4 sqrt(lambda_max)`` of the ellipse with the same
  second moments as the body (exact for an ellipse, sub-pixel).
- ``sphericity``: ``sqrt(lambda_min / lambda_max)`` of the body's second-moment matrix,
  i.e. minor / major axis ratio.
- ``orientation_deg``: direction of the major axis in ``[0, 180)``, counter-clockwise from
  the image x axis (image rows run downwards, so y is flipped).
- ``attenuation_hu``: median HU over the body minus calcification, vessels (ground glass
  lets them show through) and chest wall, eroded by two pixels
  so that the blurred edge does not bias it (robust to a part-solid core below half the
  area).
- ``area_mm2`` and ``spicule_area_mm2``: pixel counts times pixel area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .._validation import check_choice, check_ndim
from .factors import LUNG_WINDOW_HU

__all__ = ["Measurements", "measure"]


@dataclass(frozen=True)
class Measurements:
    """Per-image measurements, each a ``(N,)`` float32 tensor (see the module docstring)."""

    diameter_mm: torch.Tensor
    equivalent_diameter_mm: torch.Tensor
    sphericity: torch.Tensor
    orientation_deg: torch.Tensor
    attenuation_hu: torch.Tensor
    area_mm2: torch.Tensor
    spicule_area_mm2: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The measurements as ``name -> (N,) tensor``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _batch(name: str, t: torch.Tensor) -> torch.Tensor:
    check_ndim(name, t, (3, 4), "(1, H, W) or (N, 1, H, W)")
    return t[None] if t.ndim == 3 else t


def measure(
    image: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    pixel_spacing_mm: float | torch.Tensor,
    *,
    units: Literal["window", "hu"] = "window",
    window: tuple[float, float] = LUNG_WINDOW_HU,
) -> Measurements:
    """Measure diameter, sphericity, orientation and attenuation of rendered nodules.

    Args:
        image: ``(N, 1, H, W)`` or ``(1, H, W)`` images, windowed to ``[0, 1]``
            (``units="window"``) or in HU (``units="hu"``).
        masks: ``"nodule"`` (required), ``"spicules"``, ``"calcification"``,
            ``"vessels"`` and ``"pleura"`` (optional),
            bool tensors shaped like ``image``, as returned by
            :meth:`~nodulebench.SyntheticNodules.render`.
        pixel_spacing_mm: size of one *image* pixel in mm, a float or ``(N,)`` tensor; for a
            dataset use ``ds.pixel_size_mm[indices]`` (equal to the ``pixel_spacing_mm``
            factor when ``image_size`` is 64).
        units: how ``image`` is encoded.
        window: the ``(low, high)`` HU window of a windowed image.

    Returns:
        :class:`Measurements`.

    Raises:
        ValueError: bad shapes, a missing nodule mask, an empty nodule body, or
            non-positive pixel spacing.

    Example:
        >>> from nodulebench import SyntheticNodules
        >>> ds = SyntheticNodules(n=2)
        >>> images, masks = ds.render([0, 1], return_masks=True)
        >>> m = measure(images, masks, ds.pixel_size_mm[:2])
        >>> m.diameter_mm.shape
        torch.Size([2])
    """
    check_choice("units", units, ("window", "hu"))
    img = _batch("image", image)
    if "nodule" not in masks:
        raise ValueError(f"masks must contain 'nodule'; got keys {sorted(masks)}")
    nodule = _batch("masks['nodule']", masks["nodule"])
    n, _, h, w = img.shape
    parts = {}
    for key in ("nodule", "spicules", "calcification", "vessels", "pleura"):
        if key in masks:
            m = _batch(f"masks[{key!r}]", masks[key])
            if m.shape != img.shape:
                raise ValueError(f"masks[{key!r}] must have the image's shape {tuple(img.shape)};"
                                 f" got {tuple(m.shape)}")
            parts[key] = m.bool()
        else:
            parts[key] = torch.zeros_like(nodule, dtype=torch.bool)
    body = parts["nodule"] & ~parts["spicules"]
    pixel = torch.as_tensor(pixel_spacing_mm, dtype=torch.float64).flatten()
    pixel = pixel.expand(n) if pixel.numel() == 1 else pixel
    if pixel.shape != (n,) or not bool((pixel > 0).all()) or not bool(pixel.isfinite().all()):
        raise ValueError(f"pixel_spacing_mm must be a positive float or a ({n},) tensor of "
                         f"positive values; got {pixel_spacing_mm!r}")
    counts = body.flatten(1).sum(1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"masks['nodule'] minus spicules must be non-empty; images {empty} "
                         "are empty")
    pixel = pixel.to(img.device)

    # pixel centres in mm, x to the right and y upwards (as the renderer draws them)
    cols = torch.arange(w, device=img.device, dtype=torch.float64)
    rows = torch.arange(h, device=img.device, dtype=torch.float64)
    x = cols[None, :].expand(h, w).reshape(-1)
    y = -rows[:, None].expand(h, w).reshape(-1)
    weight = body.flatten(1).double()  # (N, HW)
    total = weight.sum(1)
    mx = (weight * x).sum(1) / total
    my = (weight * y).sum(1) / total
    cx = x[None] - mx[:, None]
    cy = y[None] - my[:, None]
    sxx = (weight * cx * cx).sum(1) / total + 1 / 12  # + pixel's own second moment
    syy = (weight * cy * cy).sum(1) / total + 1 / 12
    sxy = (weight * cx * cy).sum(1) / total
    half_trace = (sxx + syy) / 2
    root = torch.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    lam_max, lam_min = half_trace + root, (half_trace - root).clamp_min(0)
    orientation = torch.rad2deg(0.5 * torch.atan2(2 * sxy, sxx - syy)) % 180

    angles = torch.deg2rad(torch.arange(0, 180, 1.0, device=img.device, dtype=torch.float64))
    proj = x[:, None] * torch.cos(angles)[None] + y[:, None] * torch.sin(angles)[None]
    inside = body.flatten(1)[:, :, None]
    big = torch.tensor(math.inf, dtype=torch.float64, device=img.device)
    high = torch.where(inside, proj[None], -big).amax(1)
    low = torch.where(inside, proj[None], big).amin(1)
    feret = (high - low).amax(1) + 1

    hu = img.double()
    if units == "window":
        hu = window[0] + hu * (window[1] - window[0])
    region = (body & ~parts["calcification"] & ~parts["vessels"] & ~parts["pleura"]).double()
    for radius in (2, 1, 0):  # erode; fall back to less erosion for tiny nodules
        eroded = (-F.max_pool2d(-region, 2 * radius + 1, 1, radius)).bool() if radius else (
            region.bool())
        if bool((eroded.flatten(1).sum(1) > 0).all()):
            break
    values = torch.where(eroded, hu, torch.tensor(math.nan, dtype=torch.float64,
                                                  device=img.device))
    attenuation = torch.nanmedian(values.flatten(1), dim=1).values
    if bool(attenuation.isnan().any()):
        raise ValueError("masks leave no uncalcified body pixel to measure attenuation in "
                         f"images {torch.nonzero(attenuation.isnan()).flatten().tolist()}")

    area = pixel ** 2
    return Measurements(
        diameter_mm=(feret * pixel).float(),
        equivalent_diameter_mm=(4 * torch.sqrt(lam_max) * pixel).float(),
        sphericity=torch.sqrt(lam_min / lam_max).float(),
        orientation_deg=orientation.float(),
        attenuation_hu=attenuation.float(),
        area_mm2=(total * area).float(),
        spicule_area_mm2=(parts["spicules"].flatten(1).sum(1) * area).float(),
    )
