"""Recover factors from a volume and its masks: the closed loop of the volume sampler.

- ``volume_mm3``: body voxels (nodule mask minus spicules) times the voxel volume.
- ``diameter_mm``: the longest 3-D (Feret) diameter of the body, from projections of its
  surface voxels on 1,000 directions spread over the half sphere (a Fibonacci lattice).
  The masks mark voxels whose centre lies inside, so the centres' extent estimates the
  diameter itself (a voxelised ball of 8 voxels radius measures 15.8 voxels).
- ``surface_mm2``: ``sum |grad u| dV`` of the body indicator ``u`` smoothed by a Gaussian
  of 0.6 voxel (the coarea formula: the mean area of its level sets), which depends far
  less than counting voxel faces on how the surface is tilted to the grid: balls of 5 to
  8 voxels radius and 2:1 spheroids of semi-axes down to 2.5 voxels, aligned or rotated,
  measure within 4 % of their analytic areas; a ball of 3 voxels radius 8 % high (its
  voxel steps are surface too).
- ``sphericity``: Wadell's ``pi^(1/3) (6 V)^(2/3) / A``, 1 for a ball. Bodies only a few
  voxels across have too few voxels for a surface: at 32 voxels, default nodules under
  8 mm (under about 6 voxels across) read 1.05-1.21, above the bound of 1.
- ``attenuation_hu``: median HU over the body minus calcification, vessels and chest wall,
  eroded by two voxels (less for tiny nodules, volume by volume), as in 2-D; ``NaN`` where
  those masks cover the whole body.
- ``spicule_volume_mm3``: spicule voxels times the voxel volume.
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
from .measure import eroded_median

__all__ = ["VolumeMeasurements", "measure_volume"]

_DIRECTIONS = 1000
_SMOOTHING = torch.exp(-0.5 * (torch.arange(-3.0, 4.0, dtype=torch.float64) / 0.6) ** 2)


@dataclass(frozen=True)
class VolumeMeasurements:
    """Per-volume measurements, each a ``(N,)`` float32 tensor (see the module docstring)."""

    volume_mm3: torch.Tensor
    diameter_mm: torch.Tensor
    surface_mm2: torch.Tensor
    sphericity: torch.Tensor
    attenuation_hu: torch.Tensor
    spicule_volume_mm3: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The measurements as ``name -> (N,) tensor``."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _batch(name: str, t: torch.Tensor) -> torch.Tensor:
    check_ndim(name, t, (4, 5), "(1, D, H, W) or (N, 1, D, H, W)")
    return t[None] if t.ndim == 4 else t


def _spacing(voxel_size_mm: float | torch.Tensor, n: int) -> torch.Tensor:
    """``(N, 3)`` float64 spacing ``(z, y, x)`` from a float, ``(N,)`` or ``(N, 3)``."""
    t = torch.as_tensor(voxel_size_mm, dtype=torch.float64)
    if t.numel() == 1:
        t = t.reshape(1, 1).expand(n, 3)
    elif t.shape == (n,):
        t = t[:, None].expand(n, 3)
    if t.shape != (n, 3) or not bool((t > 0).all()) or not bool(t.isfinite().all()):
        raise ValueError(
            f"voxel_size_mm must be a positive float, a ({n},) or a ({n}, 3) "
            f"tensor of positive values; got {voxel_size_mm!r}"
        )
    return t


def _directions(device: torch.device) -> torch.Tensor:
    """``(3, K)`` unit vectors ``(z, y, x)`` on the upper half sphere (Fibonacci lattice)."""
    k = torch.arange(_DIRECTIONS, dtype=torch.float64, device=device) + 0.5
    z = k / _DIRECTIONS
    ring = torch.sqrt(1 - z * z)
    azimuth = k * math.pi * (3 - math.sqrt(5))
    return torch.stack((z, ring * torch.sin(azimuth), ring * torch.cos(azimuth)))


def _surface(body: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """``(N,)`` surface area in mm^2 of ``(N, D, H, W)`` bool bodies (coarea estimate)."""
    u = body[:, None].double()
    kernel = (_SMOOTHING / _SMOOTHING.sum()).to(u.device)
    reach = kernel.numel() // 2
    for axis in range(3):  # separable Gaussian, empty space beyond the border
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[4 - 2 * axis] = pad[5 - 2 * axis] = reach
        u = F.conv3d(F.pad(u, pad), kernel.reshape(shape))
    grads = torch.gradient(u[:, 0], dim=(1, 2, 3))
    scaled = [g / spacing[:, axis, None, None, None] for axis, g in enumerate(grads)]
    norm = torch.sqrt(scaled[0] ** 2 + scaled[1] ** 2 + scaled[2] ** 2)
    return norm.flatten(1).sum(1) * spacing.prod(1)


def measure_volume(
    volume: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    voxel_size_mm: float | torch.Tensor,
    *,
    units: Literal["window", "hu"] = "window",
    window: tuple[float, float] = LUNG_WINDOW_HU,
) -> VolumeMeasurements:
    """Measure volume, longest diameter, surface, sphericity and attenuation of nodules.

    Args:
        volume: ``(N, 1, D, H, W)`` or ``(1, D, H, W)`` volumes, windowed to ``[0, 1]``
            (``units="window"``) or in HU (``units="hu"``).
        masks: ``"nodule"`` (required), ``"spicules"``, ``"calcification"``,
            ``"vessels"`` and ``"pleura"`` (optional), bool tensors shaped like
            ``volume``, as returned by :meth:`~nodulebench.SyntheticNodules.render` on a
            volume dataset.
        voxel_size_mm: voxel spacing in mm: a float, an ``(N,)`` tensor (cubic voxels)
            or an ``(N, 3)`` tensor ``(z, y, x)`` such as ``ds.voxel_size_mm[indices]``.
        units: how ``volume`` is encoded.
        window: the ``(low, high)`` HU window of a windowed volume.

    Returns:
        :class:`VolumeMeasurements`.

    Raises:
        ValueError: bad shapes, a missing nodule mask, an empty nodule body, or
            non-positive voxel spacing.

    Example:
        >>> from nodulebench import SyntheticNodules
        >>> ds = SyntheticNodules(n=2, volume_size=32)
        >>> volumes, masks = ds.render([0, 1], return_masks=True)
        >>> m = measure_volume(volumes, masks, ds.voxel_size_mm[:2])
        >>> m.volume_mm3.shape, bool((m.diameter_mm > 0).all())
        (torch.Size([2]), True)
    """
    check_choice("units", units, ("window", "hu"))
    vol = _batch("volume", volume)
    if "nodule" not in masks:
        raise ValueError(f"masks must contain 'nodule'; got keys {sorted(masks)}")
    n = vol.shape[0]
    parts = {}
    for key in ("nodule", "spicules", "calcification", "vessels", "pleura"):
        if key in masks:
            m = _batch(f"masks[{key!r}]", masks[key])
            if m.shape != vol.shape:
                raise ValueError(
                    f"masks[{key!r}] must have the volume's shape "
                    f"{tuple(vol.shape)}; got {tuple(m.shape)}"
                )
            parts[key] = m.bool()
        else:
            parts[key] = torch.zeros(vol.shape, dtype=torch.bool, device=vol.device)
    spacing = _spacing(voxel_size_mm, n).to(vol.device)
    body = (parts["nodule"] & ~parts["spicules"])[:, 0]  # (N, D, H, W)
    counts = body.flatten(1).sum(1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"masks['nodule'] minus spicules must be non-empty; volumes {empty} are empty"
        )
    voxel_mm3 = spacing.prod(1)

    surface = _surface(body, spacing)
    volume_mm3 = counts.double() * voxel_mm3
    sphericity = math.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3) / surface

    # longest diameter from the surface voxels (interior ones never bound a projection)
    interior = -F.max_pool3d(-body[:, None].float(), 3, 1, 1)[:, 0] > 0
    shell = body & ~interior
    dirs = _directions(vol.device)
    feret = torch.empty(n, dtype=torch.float64, device=vol.device)
    for i in range(n):
        points = torch.nonzero(shell[i]).double() * spacing[i]  # (M, 3) in mm
        proj = points @ dirs
        feret[i] = (proj.amax(0) - proj.amin(0)).amax()
    hu = vol.double()
    if units == "window":
        hu = window[0] + hu * (window[1] - window[0])
    attenuation = eroded_median(
        hu,
        parts["nodule"]
        & ~parts["spicules"]
        & ~parts["calcification"]
        & ~parts["vessels"]
        & ~parts["pleura"],
    )
    return VolumeMeasurements(
        volume_mm3=volume_mm3.float(),
        diameter_mm=feret.float(),
        surface_mm2=surface.float(),
        sphericity=sphericity.float(),
        attenuation_hu=attenuation.float(),
        spicule_volume_mm3=(parts["spicules"].flatten(1).sum(1) * voxel_mm3).float(),
    )
