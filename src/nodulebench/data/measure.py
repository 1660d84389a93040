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
  area); by one or none where a small nodule has no pixel left, image by image; ``NaN``
  where calcification, vessels and chest wall cover the whole body (about 1 small nodule
  in 500 at 32 px: nothing uncalcified is visible to measure).
- ``area_mm2`` and ``spicule_area_mm2``: pixel counts times pixel area.
- ``calcification_hu``: mean HU over the calcification mask eroded by one pixel (the whole
  mask where erosion empties it), so that partial volume at its edge does not pull it
  down; ``NaN`` where the mask is empty (nothing calcified to measure).
- ``location``: code of ``"juxta-pleural"`` when a pleura mask is present, else
  ``"juxta-vascular"`` when the vessel mask comes within one pixel of the body, else
  ``"isolated"`` (a vessel merely crossing behind the body also counts as contact).
- ``fissure_hu`` and ``fissure``: the brightest straight line through the *background*
  (pixels two or more pixels away from every mask), the mean excess HU over the background
  median along a one-pixel-wide line at 2 degree steps (a Hough transform); ``fissure`` is
  1 where it exceeds :data:`FISSURE_THRESHOLD_HU`.
- ``noise_hu``, ``noise_high_frequency`` and ``kernel``: from pairs of neighbouring
  background pixels, ``noise_high_frequency = E[(x_i - x_(i+1))^2] / (2 var x)`` (one minus
  the lag-one autocorrelation: the power-weighted mean of ``2 sin^2(pi f)``, large for
  sharp kernels); ``kernel`` is the :data:`~nodulebench.data.factors.KERNELS` entry whose
  noise power spectrum (in cycles per mm, area-averaged to the image's pixel size)
  predicts the nearest value, and ``noise_hu`` (the level on the acquisition grid, as the
  factor) follows from the neighbour differences and that kernel's prediction (the smooth
  parenchymal texture adds little to neighbour differences). This is a model-based read;
  :func:`noise_texture` reads level and grain from the image alone.
- ``site``: the :data:`~nodulebench.data.factors.SITES` bundle with the measured kernel
  whose noise and spacing ranges lie nearest to the measured noise and acquisition spacing
  (ranges scaled to unit width), as the default marginals bundle them.

Where the masks leave no background (no line a third of the patch long, no neighbouring
pixels), ``fissure_hu``, ``noise_hu`` and ``noise_spectral_ratio`` are ``NaN`` and
``fissure``, ``kernel`` and ``site`` are ``-1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .._validation import check_choice, check_ndim
from .factors import KERNELS, LUNG_WINDOW_HU, REFERENCE_PATCH_PIXELS, SITES
from .render import noise_amplitude

__all__ = ["FISSURE_THRESHOLD_HU", "Measurements", "measure", "noise_texture"]

#: A background line brighter than this (mean excess HU) is measured as a fissure.
FISSURE_THRESHOLD_HU: float = 90.0


@dataclass(frozen=True)
class Measurements:
    """Per-image measurements, each a ``(N,)`` tensor (see the module docstring).

    Continuous measurements are float32; ``location``, ``fissure``, ``kernel`` and ``site``
    are int64 category codes of the factor of that name. ``NaN`` and ``-1`` mark what
    could not be measured: ``calcification_hu`` without calcification,
    ``attenuation_hu`` where the masks cover the whole body, the background measurements
    where the masks leave no background.
    """

    diameter_mm: torch.Tensor
    equivalent_diameter_mm: torch.Tensor
    sphericity: torch.Tensor
    orientation_deg: torch.Tensor
    attenuation_hu: torch.Tensor
    area_mm2: torch.Tensor
    spicule_area_mm2: torch.Tensor
    calcification_hu: torch.Tensor
    location: torch.Tensor
    fissure_hu: torch.Tensor
    fissure: torch.Tensor
    noise_hu: torch.Tensor
    noise_spectral_ratio: torch.Tensor
    kernel: torch.Tensor
    site: torch.Tensor

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
    """Measure the nodule, its context and the acquisition from images and their masks.

    Shape, attenuation and calcification come from the nodule's masks; location from the
    vessel and pleura masks; fissure, noise, kernel and site from the background, the pixels
    two or more pixels away from every mask (rules in the module docstring). Windowed images
    clip at the window's top: measure ``calcification_hu`` on HU images.

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
                raise ValueError(
                    f"masks[{key!r}] must have the image's shape {tuple(img.shape)};"
                    f" got {tuple(m.shape)}"
                )
            parts[key] = m.bool()
        else:
            parts[key] = torch.zeros_like(nodule, dtype=torch.bool)
    body = parts["nodule"] & ~parts["spicules"]
    pixel = torch.as_tensor(pixel_spacing_mm, dtype=torch.float64).flatten()
    pixel = pixel.expand(n) if pixel.numel() == 1 else pixel
    if pixel.shape != (n,) or not bool((pixel > 0).all()) or not bool(pixel.isfinite().all()):
        raise ValueError(
            f"pixel_spacing_mm must be a positive float or a ({n},) tensor of "
            f"positive values; got {pixel_spacing_mm!r}"
        )
    counts = body.flatten(1).sum(1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"masks['nodule'] minus spicules must be non-empty; images {empty} are empty"
        )
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
    root = torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
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
    attenuation = eroded_median(
        hu, body & ~parts["calcification"] & ~parts["vessels"] & ~parts["pleura"]
    )

    calc = parts["calcification"]
    inner = _erode(calc, 1)
    inner = torch.where(inner.flatten(1).any(1)[:, None, None, None], inner, calc)
    count = inner.flatten(1).sum(1)
    calc_hu = (hu * inner).flatten(1).sum(1) / count  # 0 / 0 = NaN where nothing is calcified
    abutting = (parts["vessels"] & _dilate(body, 1)).flatten(1).any(1) & ~(
        parts["vessels"] & _erode(body, 2)
    ).flatten(1).any(1)
    location = torch.where(parts["pleura"].flatten(1).any(1), 2, abutting.long())
    anything = (
        body | parts["spicules"] | parts["calcification"] | parts["vessels"] | (parts["pleura"])
    )
    backdrop = ~_dilate(anything, 2)
    fissure_hu = _brightest_line(hu, backdrop, x, y)
    noise_hu, ratio, kernel, site = _acquisition(hu, backdrop, pixel * h / REFERENCE_PATCH_PIXELS)

    area = pixel**2
    return Measurements(
        diameter_mm=(feret * pixel).float(),
        equivalent_diameter_mm=(4 * torch.sqrt(lam_max) * pixel).float(),
        sphericity=torch.sqrt(lam_min / lam_max).float(),
        orientation_deg=orientation.float(),
        attenuation_hu=attenuation.float(),
        area_mm2=(total * area).float(),
        spicule_area_mm2=(parts["spicules"].flatten(1).sum(1) * area).float(),
        calcification_hu=calc_hu.float(),
        location=location,
        fissure_hu=fissure_hu.float(),
        fissure=torch.where(fissure_hu.isnan(), -1, (fissure_hu > FISSURE_THRESHOLD_HU).long()),
        noise_hu=noise_hu.float(),
        noise_spectral_ratio=ratio.float(),
        kernel=kernel,
        site=site,
    )


def eroded_median(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(N,)`` median of ``values`` over ``region`` eroded by two pixels (voxels), per image.

    ``values`` and ``region`` (bool) are ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``. Each image
    takes the deepest erosion (two, one, then none) that leaves it a pixel, so a tiny
    nodule is measured on what it has and never changes how the others in its batch are
    measured; ``NaN`` where the region itself is empty.
    """
    pool = F.max_pool2d if region.ndim == 4 else F.max_pool3d
    chosen = torch.zeros_like(region)
    for radius in (0, 1, 2):  # each deeper erosion replaces the last where it leaves pixels
        eroded = ~pool((~region).double(), 2 * radius + 1, 1, radius).bool() if radius else (region)
        keeps = eroded.flatten(1).any(1).reshape((-1,) + (1,) * (region.ndim - 1))
        chosen = torch.where(keeps, eroded, chosen)
    inside = torch.where(
        chosen, values, torch.tensor(math.nan, dtype=values.dtype, device=values.device)
    )
    return torch.nanmedian(inside.flatten(1), dim=1).values


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask.double(), 2 * radius + 1, 1, radius).bool()


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return ~_dilate(~mask, radius)


def _brightest_line(
    hu: torch.Tensor, backdrop: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``(N,)`` largest mean excess HU along a one-pixel line through the backdrop."""
    n, _, h, w = hu.shape
    keep = backdrop.flatten(1).double()
    values = hu.flatten(1)
    level = torch.nanmedian(torch.where(keep > 0, values, math.nan), dim=1).values
    excess = torch.nan_to_num((values - level[:, None]) * keep)  # level is NaN: no backdrop
    angles = torch.deg2rad(torch.arange(0, 180, 2.0, dtype=torch.float64, device=hu.device))
    cx, cy = x - (w - 1) / 2, y + (h - 1) / 2
    offset = torch.round(cx[:, None] * torch.cos(angles) + cy[:, None] * torch.sin(angles))
    bins = int(math.ceil(math.hypot(h, w))) + 2
    index = (offset + bins // 2).long() + bins * torch.arange(angles.numel(), device=hu.device)
    index = index.reshape(-1).expand(n, -1)
    sums = hu.new_zeros(n, bins * angles.numel(), dtype=torch.float64)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, index, excess.repeat_interleave(angles.numel(), 1))
    counts.scatter_add_(1, index, keep.repeat_interleave(angles.numel(), 1))
    # a line must cross at least a third of the patch to count
    mean = torch.where(counts >= min(h, w) / 3, sums / counts.clamp_min(1), -math.inf)
    best = mean.amax(1).clamp_min(0.0)
    return torch.where(counts.amax(1) >= min(h, w) / 3, best, math.nan)


def _kernel_differences(size: int, spacing: torch.Tensor) -> torch.Tensor:
    """``(N, kernels, 3)`` first- and second-difference variance of each kernel's noise.

    Noise of unit standard deviation on the acquisition grid (spacing ``spacing``, ``(N,)``
    mm) seen on the ``size``-pixel image: the kernels' documented spectra in cycles per mm
    (:func:`~nodulebench.data.render.noise_power`) after area averaging. The first two
    entries are per unit image variance; the third is the image variance itself.
    """
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)
    weight = torch.full((fx.numel(),), 2.0, dtype=torch.float64)  # Hermitian half
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    first = 4 * torch.sin(math.pi * fx)[None, :] ** 2 * torch.ones(size, 1, dtype=torch.float64)
    out = []
    for code in range(len(KERNELS)):
        kernel = torch.full(spacing.shape, code, dtype=torch.int64)
        amp = noise_amplitude(kernel, spacing.float().cpu(), size, size).double()
        power = amp**2 * weight
        total = power.sum((1, 2))
        power = power / total[:, None, None]
        out.append(
            torch.stack(
                [(power * first).sum((1, 2)), (power * first**2).sum((1, 2)), total / size**2],
                -1,
            )
        )
    return torch.stack(out, 1)


def _acquisition(
    hu: torch.Tensor, backdrop: torch.Tensor, spacing: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise std, spectral ratio, kernel and site codes, each ``(N,)``, from the backdrop."""
    img, keep = hu[:, 0], backdrop[:, 0]
    first = img.new_zeros(2, img.shape[0])
    second = img.new_zeros(2, img.shape[0])
    for dim in (1, 2):  # rows and columns
        a, b, c = (img.narrow(dim, i, img.shape[dim] - 2) for i in range(3))
        ka, kb, kc = (keep.narrow(dim, i, keep.shape[dim] - 2) for i in range(3))
        both, three = (ka & kb).double(), (ka & kb & kc).double()
        first += torch.stack([((b - a) ** 2 * both).flatten(1).sum(1), both.flatten(1).sum(1)])
        second += torch.stack(
            [((c - 2 * b + a) ** 2 * three).flatten(1).sum(1), three.flatten(1).sum(1)]
        )
    d1, d2 = first[0] / first[1], second[0] / second[1]
    ratio = d2 / d1
    predicted = _kernel_differences(hu.shape[-1], spacing).to(hu.device)
    kernel = (ratio[:, None] - predicted[:, :, 1] / predicted[:, :, 0]).abs().argmin(1)
    rows = torch.arange(kernel.numel(), device=hu.device)
    # the image's noise std from the second differences, then the acquisition's (binned
    # pixels are quieter than the acquisition's by a known factor)
    noise = torch.sqrt(d2 / predicted[rows, kernel, 1] / predicted[rows, kernel, 2])
    names = list(KERNELS)
    far = torch.tensor(math.inf, dtype=torch.float64, device=hu.device)
    cost = []
    for site in SITES.values():
        gap = spacing.new_zeros(spacing.shape)
        for value, (low, top) in ((noise, site.noise_hu), (spacing, site.pixel_spacing_mm)):
            gap = gap + ((low - value).clamp_min(0) + (value - top).clamp_min(0)) / (top - low)
        cost.append(torch.where(kernel == names.index(site.kernel), gap, far))
    site_code = torch.stack(cost, 1).argmin(1)
    unknown = ratio.isnan()  # no neighbouring background pixels
    return (noise, ratio, kernel.masked_fill(unknown, -1), site_code.masked_fill(unknown, -1))


def noise_texture(
    noise: torch.Tensor,
    pixel_mm: float | torch.Tensor,
    region: torch.Tensor | None = None,
    *,
    max_lag: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Level and grain of noise, read from the images alone (their autocorrelation).

    The standard deviation over ``region``, and the grain as the autocorrelation
    half-length: the lag, in mm, at which the in-plane autocorrelation (mean of the x and y
    directions, pairs inside ``region`` only) first falls to one half, interpolated
    linearly between whole-pixel lags. It uses no model of the renderer, so it checks the
    renderer: a noise field with a fixed grain in mm gives the same half-length at every
    pixel size, down to about half a pixel (a field averaged into pixels coarser than its
    grain cannot look finer than them).

    A noise field can come from the images themselves, e.g. two rescans:
    ``(ds.render(i, rescan=1) - ds.render(i, rescan=2)) / 2 ** 0.5``, or a region of
    uniform tissue.

    Args:
        noise: ``(N, 1, H, W)`` images or ``(N, 1, D, H, W)`` volumes, in HU (slices of a
            volume are pooled: the grain is in-plane).
        pixel_mm: in-plane pixel size in mm, a float or an ``(N,)`` tensor.
        region: bool mask shaped like ``noise`` (default: everything).
        max_lag: the largest lag in pixels searched, ``>= 1`` and under the image size
            (default: 16, or one less than the image size if that is smaller).

    Returns:
        ``(std_hu, half_length_mm)``, each ``(N,)`` float64; ``half_length_mm`` is ``NaN``
        where the autocorrelation stays above one half up to ``max_lag``.

    Raises:
        ValueError: ``noise`` is not 4-D or 5-D with one channel, ``region`` has another
            shape, ``pixel_mm`` is not positive, or ``max_lag`` is out of range.

    Example:
        >>> field = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> std, grain = noise_texture(field, 0.7)
        >>> bool((std - 1).abs().max() < 0.1), bool((grain < 0.7).all())
        (True, True)
    """
    if noise.ndim not in (4, 5) or noise.shape[1] != 1:
        raise ValueError(
            f"noise must be (N, 1, H, W) or (N, 1, D, H, W); got shape {tuple(noise.shape)}"
        )
    h, w = noise.shape[-2:]
    if max_lag is None:
        max_lag = min(16, min(h, w) - 1)
    if isinstance(max_lag, bool) or not isinstance(max_lag, int) or not 1 <= max_lag < min(h, w):
        raise ValueError(f"max_lag must be an int in [1, {min(h, w) - 1}]; got {max_lag!r}")
    if region is None:
        region = torch.ones_like(noise, dtype=torch.bool)
    if region.shape != noise.shape or region.dtype != torch.bool:
        raise ValueError(
            f"region must be a bool mask of shape {tuple(noise.shape)}; got "
            f"{region.dtype} of shape {tuple(region.shape)}"
        )
    n = noise.shape[0]
    pixel = torch.as_tensor(pixel_mm, dtype=torch.float64, device=noise.device).flatten()
    if pixel.numel() == 1:
        pixel = pixel.expand(n)
    if pixel.shape != (n,) or not bool((pixel > 0).all()):
        raise ValueError(f"pixel_mm must be a positive float or ({n},) tensor; got {pixel_mm!r}")
    x = noise.double().reshape(n, -1, h, w)
    m = region.reshape(n, -1, h, w).double()
    count = m.sum((1, 2, 3))
    mean = (x * m).sum((1, 2, 3)) / count
    x = (x - mean[:, None, None, None]) * m
    variance = (x * x).sum((1, 2, 3)) / count
    acf = [torch.ones_like(variance)]
    for lag in range(1, max_lag + 1):
        pairs = (x[..., lag:] * x[..., :-lag]).sum((1, 2, 3)) + (
            x[..., lag:, :] * x[..., :-lag, :]
        ).sum((1, 2, 3))
        both = (m[..., lag:] * m[..., :-lag]).sum((1, 2, 3)) + (
            m[..., lag:, :] * m[..., :-lag, :]
        ).sum((1, 2, 3))
        acf.append(pairs / both / variance)
    curve = torch.stack(acf, 1)  # (N, max_lag + 1)
    below = curve < 0.5
    first = below.long().argmax(1).clamp(min=1)
    rows = torch.arange(n, device=noise.device)
    upper, lower = curve[rows, first - 1], curve[rows, first]
    lag_px = (first - 1) + (upper - 0.5) / (upper - lower)
    half = torch.where(below.any(1), lag_px * pixel, torch.full_like(lag_px, math.nan))
    return torch.sqrt(variance), half
