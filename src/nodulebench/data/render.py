"""Vectorised batch renderer: factors in physical units -> CT-like patches in HU.

The nodule is described in millimetres by :mod:`~nodulebench.data.geometry` (a body outline
``r(theta)`` on a 1-D angular grid, spicules as parametric strands); this module samples that
description on a pixel grid with *partial volume*: a pixel's value is the average over its
area. Edges are linear ramps at least one pixel wide, and a spicule's coverage is the exact
overlap of its cross-section with the pixel's footprint across the strand, so a strand
thinner than a pixel contributes its true area, faintly, at every output size. Layers,
back to front:

1. lung parenchyma at ``background_hu`` plus a smooth texture (bicubic upsampling of a
   coarse white field) and ``vessels`` (soft tubes at soft-tissue density);
2. the nodule: body and spicules at ``attenuation_hu`` as a *fill fraction* of the voxel,
   so ground glass adds density to what lies behind it (vessels stay visible) and nothing
   of the nodule is brighter than its body; a solid core of varying size and position for
   part-solid texture; calcification at ``calcification_hu``;
3. the acquisition: a Gaussian point-spread function (``blur_mm`` and the kernel's own, in
   quadrature) and noise of std ``noise_hu`` with the kernel's noise power spectrum, both
   applied in one batched FFT.

All randomness is the exogenous noise of :mod:`~nodulebench.data.rng`, keyed by
``(seed, index)``: the factors alone decide what changes between two renders of a sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from . import geometry, rng
from .factors import (
    CHEST_WALL_HU,
    FACTORS,
    FISSURE_HU,
    KERNELS,
    LUNG_WINDOW_HU,
    REFERENCE_PATCH_PIXELS,
    SOLID_CORE_HU,
    VESSEL_COUNTS,
)
from .geometry import ANGLES, CALCIFICATION_BLOBS, shape_slice

__all__ = ["MASK_NAMES", "render_hu", "window"]

#: Keys of the ground-truth mask dict.
MASK_NAMES: tuple[str, ...] = ("nodule", "body", "spicules", "calcification", "vessels",
                                "pleura")

_MAX_VESSELS = max(VESSEL_COUNTS)
_TEXTURE_GRID = 16  # coarse grid of the parenchymal texture across the patch
_SOFT_TISSUE_HU = 40.0
_SHAPE_STREAM = 100
_NOISE_STREAM = 101
_CALCIFICATION_CODES = {name: code for code, name in
                        enumerate(FACTORS["calcification"].categories)}


def window(hu: torch.Tensor, low: float = LUNG_WINDOW_HU[0],
           high: float = LUNG_WINDOW_HU[1]) -> torch.Tensor:
    """Map HU linearly to ``[0, 1]`` over ``[low, high]``, clamping outside."""
    return ((hu - low) / (high - low)).clamp_(0.0, 1.0)


def _ramp(signed_mm: torch.Tensor, width_mm: torch.Tensor) -> torch.Tensor:
    """Soft inside-indicator: 1 inside (``signed_mm > width/2``), 0.5 on the edge, linear."""
    return (signed_mm / width_mm).add_(0.5).clamp_(0.0, 1.0)


def _lookup(table: torch.Tensor, pos: torch.Tensor, i0: torch.Tensor) -> torch.Tensor:
    """Periodic linear interpolation of an ``(N, K)`` table at bin position ``pos (N, P)``.

    Linear (not nearest-bin) so that the radius is a continuous function of the angle: a
    last-bit difference in ``atan2`` between devices moves an edge by a last-bit amount.
    """
    frac = pos - i0
    i = i0.long().bitwise_and_(ANGLES - 1)  # "& (K - 1)" wraps negative angles
    return torch.addcmul(torch.gather(table, 1, i), frac,
                         torch.gather(table.roll(-1, 1) - table, 1, i))


def _spicule_coverage(sp: geometry.Spicules, dx: torch.Tensor, dy: torch.Tensor,
                      nearest_bin: torch.Tensor, pixel_mm: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial-volume coverage ``(N, P)`` of each pixel by its nearest spicule, and a mask.

    Across the strand the coverage is the overlap of the cross-section ``[d - w/2, d + w/2]``
    with the pixel's footprint ``[-p/2, p/2]``, divided by ``p``: summed over pixels it
    gives the strand's area whatever ``p``. The mask marks the pixels the strand passes
    through (its centre line within half a pixel, or the pixel centre inside it).
    """
    n = dx.shape[0]
    params = sp.table().reshape(n * ANGLES, -1)  # one row per angular bin
    row = nearest_bin.bitwise_and_(ANGLES - 1).add_(
        torch.arange(n, device=dx.device)[:, None] * ANGLES)
    picked = params.index_select(0, row.flatten()).reshape(n, -1, params.shape[1])
    cos_a, sin_a, base, length, width, bend, ripple = picked.unbind(-1)
    along = dx * cos_a + dy * sin_a - base
    t = (along / length.clamp(min=1e-6)).clamp_(0.0, 1.0)
    across = dy * cos_a - dx * sin_a - bend * t * t
    half = 0.5 * width * (1 - 0.85 * t) * (1 + 0.2 * torch.sin(3 * math.pi * t + ripple))
    p = pixel_mm.reshape(n, 1)
    overlap = torch.minimum(across + half, 0.5 * p) - torch.maximum(across - half, -0.5 * p)
    cover = overlap.clamp_(min=0.0) / p
    cover *= (along / p + 0.5).clamp_(0.0, 1.0) * ((length - along) / p + 0.5).clamp_(0.0, 1.0)
    inside = (across.abs() < torch.maximum(half, 0.5 * p)) & (along >= 0) & (along <= length)
    return cover, inside & (length > 0)


def _calcification_sdf(code: torch.Tensor, rho: torch.Tensor, body_r: torch.Tensor,
                       dx: torch.Tensor, dy: torch.Tensor, mean_r: torch.Tensor,
                       blob_u: torch.Tensor) -> torch.Tensor:
    """Signed distance (mm, > 0 inside) to the calcified region of each pattern.

    Central, laminated and diffuse patterns are rings or discs in the body's own radial
    coordinate ``rho = r / r(theta)``; popcorn, eccentric and stippled patterns are blobs:
    five coarse ones, one off-centre disc, or up to twelve fine dots.
    """
    c = code[:, None, None]
    codes = _CALCIFICATION_CODES
    sdf = torch.full_like(rho, -1e3)
    sdf = torch.where(c == codes["central"], (0.35 - rho) * body_r, sdf)
    sdf = torch.where(c == codes["laminated"],
                      torch.maximum(0.07 - (rho - 0.62).abs(), 0.12 - rho) * body_r, sdf)
    sdf = torch.where(c == codes["diffuse"], (0.8 - rho) * body_r, sdf)
    blobby = (code == codes["popcorn"]) | (code == codes["eccentric"]) | (
        code == codes["stippled"])
    pick = torch.nonzero(blobby).flatten()
    if pick.numel():
        k = CALCIFICATION_BLOBS
        u = blob_u[pick]
        cp = code[pick, None]
        r_mean = mean_r[pick, None]
        blob = torch.arange(k, device=code.device)[None, :]
        # popcorn: 5 blobs of 14-22 % of the radius within 60 % of it; eccentric: one disc of
        # 30 % at 50 %; stippled: 12 dots of 0.6-0.9 mm within 75 %
        radius = torch.where(cp == codes["popcorn"], 0.6 * u[:, :k] ** 0.5,
                             torch.where(cp == codes["eccentric"], torch.full_like(u[:, :k], 0.5),
                                         0.75 * u[:, :k] ** 0.5)) * r_mean
        size = torch.where(cp == codes["popcorn"], (0.14 + 0.08 * u[:, 2 * k:]) * r_mean,
                           torch.where(cp == codes["eccentric"], 0.3 * r_mean,
                                       0.6 + 0.3 * u[:, 2 * k:]))
        count = torch.where(cp == codes["popcorn"], 5, torch.where(cp == codes["eccentric"],
                                                                     1, k))
        size = torch.where(blob < count, size, torch.full_like(size, -1e3))
        angle = 2 * math.pi * u[:, k:2 * k]
        bx = (radius * torch.cos(angle))[:, :, None, None]
        by = (radius * torch.sin(angle))[:, :, None, None]
        dist = torch.sqrt((dx[pick, None] - bx) ** 2 + (dy[pick, None] - by) ** 2)
        sdf[pick] = (size[:, :, None, None] - dist).amax(1)
    return sdf


def _gaussian_transfer(freq2: torch.Tensor, sigma_mm: torch.Tensor) -> torch.Tensor:
    """Fourier transfer function of a Gaussian PSF; ``freq2`` in (cycles/mm)^2."""
    return torch.exp(-2 * math.pi ** 2 * sigma_mm[:, None, None] ** 2 * freq2)


@functools.lru_cache(maxsize=32)
def _upsample_matrix(size: int, grid: int, periodic: bool, device: str) -> torch.Tensor:
    """``(size, grid)`` weights resampling ``grid`` cell centres onto ``size`` cell centres.

    Periodic grids use the cubic B-spline (smooth, no grid pattern: the texture);
    non-periodic ones use linear interpolation clamped at the border (the background layer).
    """
    t = (torch.arange(size, dtype=torch.float64) + 0.5) * (grid / size) - 0.5
    node = torch.arange(grid, dtype=torch.float64)
    if periodic:
        d = ((t[:, None] - node[None, :] + grid / 2) % grid - grid / 2).abs()
        w = torch.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2,
                        torch.where(d < 2, (2 - d) ** 3 / 6, torch.zeros_like(d)))
    else:
        t = t.clamp(0, grid - 1)
        w = (1 - (t[:, None] - node[None, :]).abs()).clamp(min=0)
    return w.float().to(device)


# std of a unit white field upsampled with the cubic B-spline: 0.5 at the nodes, 0.46
# midway (product of the 1-D sums of squared weights), 0.48 on average
_BSPLINE_STD = 0.48


def render_hu(factors: Mapping[str, torch.Tensor], seed: int, indices: torch.Tensor,
              image_size: int, *, with_masks: bool = False, chunk_size: int = 128,
              window_hu: tuple[float, float] | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Render a batch of patches in HU (or windowed to ``[0, 1]``).

    Args:
        factors: name -> ``(N,)`` tensor on the target device (continuous as floats,
            categorical as int64 codes); every factor of ``FACTORS``.
        seed: dataset seed; with ``indices`` it keys the exogenous noise.
        indices: ``(N,)`` int64 sample indices.
        image_size: output height and width ``S`` in pixels.
        with_masks: also return the ground-truth masks.
        chunk_size: samples rendered together (cache-sized working set); does not change
            the result.
        window_hu: when given, map ``[low, high]`` HU to ``[0, 1]`` (see :func:`window`)
            while each chunk is still in cache.

    Returns:
        ``hu`` of shape ``(N, 1, S, S)`` float32 (windowed if asked), and ``None`` or a
        dict with keys :data:`MASK_NAMES` of ``(N, 1, S, S)`` bool masks (before blur and
        noise).
    """
    dev = factors["diameter_mm"].device
    n, s = indices.shape[0], image_size
    hu = torch.empty(n, 1, s, s, device=dev, dtype=torch.float32)
    masks = ({k: torch.empty(n, 1, s, s, device=dev, dtype=torch.bool) for k in MASK_NAMES}
             if with_masks else None)
    step = n if dev.type != "cpu" else max(1, chunk_size)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        part = {k: v[sl] for k, v in factors.items()}
        out = hu[sl, 0]
        m = _render_chunk(part, seed, indices[sl].to(dev), s, with_masks, out)
        if window_hu is not None:
            low, high = window_hu
            out.sub_(low).mul_(1.0 / (high - low)).clamp_(0.0, 1.0)
        if masks is not None and m is not None:
            for k in MASK_NAMES:
                masks[k][sl, 0] = m[k]
    return hu, masks


def _render_chunk(factors: Mapping[str, torch.Tensor], seed: int, idx: torch.Tensor, s: int,
                  with_masks: bool, out: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Render ``(n, S, S)`` HU into ``out``; return the masks when asked."""
    dev = idx.device
    dt = torch.float32
    n = idx.shape[0]
    shape_u = rng.uniform(rng.key_words(seed, idx, _SHAPE_STREAM), geometry.SHAPE_NUMBERS, dt)

    def f32(name: str) -> torch.Tensor:
        return factors[name].to(dt)

    pixel_mm = f32("pixel_spacing_mm") * (REFERENCE_PATCH_PIXELS / s)
    coords = torch.arange(s, device=dev, dtype=dt) - (s - 1) / 2
    x = coords[None, None, :] * pixel_mm[:, None, None]  # (N, 1, S), x to the right
    y = -coords[None, :, None] * pixel_mm[:, None, None]  # (N, S, 1), y upwards
    dx = x - f32("offset_x_mm")[:, None, None]
    dy = y - f32("offset_y_mm")[:, None, None]
    r = torch.sqrt(dx * dx + dy * dy)  # (N, S, S)
    angle = torch.atan2(dy, dx).reshape(n, -1)
    body_k = geometry.body_radius(factors, shape_u)
    spic = geometry.spicules(factors, shape_u, body_k)
    pos = angle * (ANGLES / (2 * math.pi))
    i0 = torch.floor(pos)
    body_r = _lookup(body_k, pos, i0).reshape(n, s, s)
    nearest_bin = torch.round(pos).to(torch.int64)
    spic_cover, spic_inside = _spicule_coverage(spic, dx.expand(n, s, s).reshape(n, -1),
                                                dy.expand(n, s, s).reshape(n, -1), nearest_bin,
                                                pixel_mm)
    # partial volume: an edge is never sharper than one output pixel
    pv = pixel_mm[:, None, None]
    margin_mm = (0.1 + 2.9 * (1 - f32("margin_sharpness")))[:, None, None]
    edge_mm = torch.sqrt(margin_mm ** 2 + pv ** 2)
    alpha_body = _ramp(body_r - r, edge_mm)
    spic_cover = spic_cover.reshape(n, s, s)
    alpha_nodule = alpha_body + (1 - alpha_body) * spic_cover  # union of the two covers

    # --- background, on a half-resolution grid: parenchyma + smooth texture + vessels
    noise_key = rng.key_words(seed, idx, _NOISE_STREAM)
    g = _TEXTURE_GRID
    # the acquisition works on a replicate-padded grid: a chest wall at one border must not
    # wrap round to the other through the FFT's periodic blur
    pad = max(2, s // 8)
    sp = s + 2 * pad
    half_bins = sp * (sp // 2 + 1)
    white = rng.centered_halves(noise_key, (g * g + 2 * half_bins + 1) // 2, dt)
    background, vessel_alpha = _background(factors, shape_u, white[:, :g * g], pixel_mm, s,
                                           with_masks, body_k)
    wall_alpha = _context(factors, shape_u, background, dx, dy, body_k, pixel_mm)

    # --- nodule: a fill fraction f of dense tissue D, so ground glass adds to what is behind
    att = f32("attenuation_hu")[:, None, None]
    level = f32("background_hu")[:, None, None]
    dense = torch.clamp(att, min=_SOFT_TISSUE_HU)
    fill = (att - level) / (dense - level)
    hu = background
    hu += (alpha_nodule * fill) * (dense - hu)
    rho = r / body_r
    mean_r = body_k.mean(1)
    ps = torch.nonzero(factors["texture"] == 1).flatten()
    if ps.numel():
        core_u = shape_slice(shape_u[ps], "solid_core")
        core_radius = (0.3 + 0.3 * core_u[:, 0]) * mean_r[ps]
        core_shift = 0.35 * core_u[:, 1] * mean_r[ps]
        core_angle = 2 * math.pi * core_u[:, 2]
        cx = (core_shift * torch.cos(core_angle))[:, None, None]
        cy = (core_shift * torch.sin(core_angle))[:, None, None]
        core_sdf = core_radius[:, None, None] - torch.sqrt((dx[ps] - cx) ** 2
                                                           + (dy[ps] - cy) ** 2)
        core = _ramp(core_sdf, edge_mm[ps]) * alpha_body[ps]
        hu[ps] += core * (SOLID_CORE_HU - hu[ps])
    calc_sdf = None
    calcified = torch.nonzero(factors["calcification"] != 0).flatten()
    if calcified.numel():
        c = calcified
        calc_sdf = _calcification_sdf(factors["calcification"][c], rho[c], body_r[c], dx[c],
                                      dy[c], mean_r[c], shape_slice(shape_u[c], "calcification"))
        alpha_calc = _ramp(calc_sdf, pv[c]) * alpha_body[c]
        hu[c] += alpha_calc * (f32("calcification_hu")[c, None, None] - hu[c])

    # --- acquisition: Gaussian PSF (blur and kernel) and kernel-shaped noise, one FFT pair
    kernel = factors["kernel"]
    psf_px = torch.tensor([k.psf_pixels for k in KERNELS.values()], device=dev, dtype=dt)
    sigma_mm = torch.sqrt(f32("blur_mm") ** 2
                          + (psf_px[kernel] * f32("pixel_spacing_mm")) ** 2)
    fy = torch.fft.fftfreq(sp, device=dev, dtype=dt)[:, None]
    fx = torch.fft.rfftfreq(sp, device=dev, dtype=dt)[None, :]
    freq2_px = fy ** 2 + fx ** 2  # (cycles / output pixel)^2
    padded = torch.nn.functional.pad(hu[:, None], (pad, pad, pad, pad), mode="replicate")
    spectrum = torch.fft.rfft2(padded[:, 0], norm="ortho")
    blur_px = sigma_mm / pixel_mm
    spectrum *= torch.exp(freq2_px[None] * (-2 * math.pi ** 2 * blur_px ** 2)[:, None, None])
    # centred uniforms times sqrt(6): variance 1/2 per part, unit complex variance
    amp = _noise_amplitude(sp, s, str(dev))[kernel] * (
        math.sqrt(6.0) * f32("noise_hu"))[:, None, None]
    w = torch.view_as_complex(white[:, g * g:g * g + 2 * half_bins].reshape(n, sp, sp // 2 + 1,
                                                                            2))
    spectrum += w * amp
    out.copy_(torch.fft.irfft2(spectrum, s=(sp, sp), norm="ortho")[:, pad:pad + s, pad:pad + s])

    masks = None
    if with_masks:
        body = r < body_r
        spicules = spic_inside.reshape(n, s, s) & ~body
        calc = torch.zeros_like(body)
        if calc_sdf is not None:
            calc[calcified] = body[calcified] & (calc_sdf > 0)
        # thin vessels cover a pixel partly: mark the pixels they pass through
        vessels = (vessel_alpha > 0.25 if vessel_alpha is not None
                   else torch.zeros_like(body))
        masks = {"nodule": body | spicules, "body": body, "spicules": spicules,
                 "calcification": calc, "vessels": vessels, "pleura": wall_alpha > 0.5}
    return masks


def _context(factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor, hu: torch.Tensor,
             dx: torch.Tensor, dy: torch.Tensor, body_k: torch.Tensor, pixel_mm: torch.Tensor
             ) -> torch.Tensor:
    """Draw the fissure and the chest wall into ``hu`` in place; return the wall's coverage.

    The pleura of a juxta-pleural nodule is an arc of a 100 mm circle (the thorax) touching
    the body on a random side; the chest wall beyond it is muscle. A fissure is a 0.4 mm
    line across the patch, partial-volume averaged like a spicule.
    """
    s = hu.shape[-1]
    p = pixel_mm[:, None, None]
    wall = torch.zeros_like(hu)
    fis = torch.nonzero(factors["fissure"] == 1).flatten()
    if fis.numel():
        u = shape_slice(shape_u[fis], "fissure")
        angle = math.pi * u[:, 0]
        fov = pixel_mm[fis] * s
        offset = (u[:, 1] - 0.5) * 0.8 * fov
        x = dx[fis] + factors["offset_x_mm"][fis].to(hu.dtype)[:, None, None]
        y = dy[fis] + factors["offset_y_mm"][fis].to(hu.dtype)[:, None, None]
        d = (x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]
             - offset[:, None, None])
        half, pf = 0.2, p[fis]
        cover = (torch.minimum(d + half, 0.5 * pf) - torch.maximum(d - half, -0.5 * pf))
        cover = cover.clamp_(min=0.0) / pf
        hu[fis] += cover * (FISSURE_HU - hu[fis])
    pleural = torch.nonzero(factors["location"] == 2).flatten()
    if pleural.numel():
        u = shape_slice(shape_u[pleural], "pleura")
        phi = 2 * math.pi * u[:, 0]
        bins = (u[:, 0] * ANGLES).long().clamp_(0, ANGLES - 1)
        touch = torch.gather(body_k[pleural], 1, bins[:, None])[:, 0] + (u[:, 1] - 0.7)
        radius = 100.0
        cx = (touch - radius) * torch.cos(phi)  # the thorax centre, relative to the nodule
        cy = (touch - radius) * torch.sin(phi)
        sd = torch.sqrt((dx[pleural] - cx[:, None, None]) ** 2
                        + (dy[pleural] - cy[:, None, None]) ** 2) - radius
        alpha = _ramp(sd, p[pleural])
        hu[pleural] += alpha * (CHEST_WALL_HU - hu[pleural])
        wall[pleural] = alpha
    return wall


@functools.lru_cache(maxsize=32)
def _noise_amplitude(size: int, s: int, device: str) -> torch.Tensor:
    """``(kernels, size, size // 2 + 1)`` amplitude of unit-std CT-like noise, half spectrum.

    ``size`` is the (padded) FFT grid, ``s`` the output size. The noise power spectrum of
    each kernel is ``f exp(-(f / f0)^2)`` with ``f0`` in cycles per *acquisition* pixel
    (:data:`~nodulebench.data.factors.KERNELS`), so the grain follows the acquisition
    spacing whatever the output size. Normalised on the full frequency grid so that the
    image-domain standard deviation is 1 (``norm="ortho"``).
    """
    full = torch.fft.fftfreq(size, dtype=torch.float64)
    full2 = full[:, None] ** 2 + full[None, :] ** 2
    half2 = full2[:, : size // 2 + 1]
    out = []
    for kernel in KERNELS.values():
        f0 = kernel.noise_peak * s / REFERENCE_PATCH_PIXELS
        norm = torch.sqrt((torch.sqrt(full2) * torch.exp(-full2 / f0 ** 2)).mean())
        out.append(torch.sqrt(torch.sqrt(half2) * torch.exp(-half2 / f0 ** 2)) / norm)
    return torch.stack(out).float().to(device)


def _background(factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor,
                coarse_white: torch.Tensor, pixel_mm: torch.Tensor, s: int,
                with_mask: bool, body_k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parenchyma, texture and vessels in HU, ``(N, S, S)``, and the vessel mask if asked.

    Drawn on a half-resolution grid (vessels are 1-3 mm wide, the texture is smoother) and
    resampled linearly: a quarter of the per-pixel work. Vessels taper along their length;
    every odd-numbered vessel is a branch leaving the previous one at 20-50 degrees. A
    juxta-vascular nodule (``body_k``: its body radius on the angular grid) has a first
    vessel, present whatever ``vessels`` says, whose wall touches the body where the vessel
    is densest.
    """
    dev = shape_u.device
    dt = shape_u.dtype
    n = shape_u.shape[0]
    low = max(16, s // 2)
    g = _TEXTURE_GRID
    coarse = coarse_white.reshape(n, g, g) * math.sqrt(12.0)
    up = _upsample_matrix(low, g, True, str(dev))
    amplitude = factors["background_texture_hu"].to(dt) / _BSPLINE_STD
    field = (up @ coarse @ up.T).mul_(amplitude[:, None, None])
    field += factors["background_hu"].to(dt)[:, None, None]

    low_mm = pixel_mm * (s / low)
    coords = torch.arange(low, device=dev, dtype=dt) - (low - 1) / 2
    x = coords[None, None, :] * low_mm[:, None, None]
    y = -coords[None, :, None] * low_mm[:, None, None]
    vu = shape_slice(shape_u, "vessels").reshape(n, 6, -1)  # angle, offset, middle, ...
    fov = pixel_mm * s
    v_angle = math.pi * vu[:, 0]
    v_offset = (vu[:, 1] - 0.5) * 0.8 * fov[:, None]  # distance of the axis from the centre
    v_middle = (vu[:, 2] - 0.5) * 0.8 * fov[:, None]  # where along the axis it is densest
    v_half_length = (0.25 + 0.5 * vu[:, 3]) * fov[:, None]
    v_radius = 0.35 + 0.55 * vu[:, 4]
    # small vessels are partial-volume averaged: peak contrast below soft tissue
    v_peak = -450.0 + 450.0 * vu[:, 5]
    juxta = factors["location"] == 1
    if bool(juxta.any()):
        # vessel 0 runs beside a juxta-vascular nodule, its wall touching the body
        ox, oy = factors["offset_x_mm"].to(dt), factors["offset_y_mm"].to(dt)
        c0, s0 = torch.cos(v_angle[:, 0]), torch.sin(v_angle[:, 0])
        side = torch.where(vu[:, 1, 0] < 0.5, -1.0, 1.0)
        toward = torch.atan2(side * s0, side * c0) % (2 * math.pi)
        bins = (toward * (ANGLES / (2 * math.pi))).long().clamp_(0, ANGLES - 1)
        radius = torch.gather(body_k, 1, bins[:, None])[:, 0]
        touch = ox * c0 + oy * s0 + side * (radius + 0.6 * v_radius[:, 0])
        v_offset[:, 0] = torch.where(juxta, touch, v_offset[:, 0])
        v_middle[:, 0] = torch.where(juxta, oy * c0 - ox * s0, v_middle[:, 0])
        v_peak[:, 0] = torch.where(juxta, -150.0 + 150.0 * vu[:, 5, 0], v_peak[:, 0])
    # a branch starts where its parent is densest and runs off at 20-50 degrees, thinner
    branch = torch.arange(_MAX_VESSELS, device=dev) % 2 == 1
    parent = (torch.arange(_MAX_VESSELS, device=dev) - 1).clamp(min=0)
    px = v_offset[:, parent] * torch.cos(v_angle[:, parent]) - v_middle[:, parent] * torch.sin(
        v_angle[:, parent])
    py = v_offset[:, parent] * torch.sin(v_angle[:, parent]) + v_middle[:, parent] * torch.cos(
        v_angle[:, parent])
    turn = torch.deg2rad(20 + 30 * vu[:, 3]) * torch.where(vu[:, 2] < 0.5, -1.0, 1.0)
    b_angle = v_angle[:, parent] + turn
    v_angle = torch.where(branch, b_angle, v_angle)
    v_cos, v_sin = torch.cos(v_angle), torch.sin(v_angle)
    v_offset = torch.where(branch, px * v_cos + py * v_sin, v_offset)
    v_middle = torch.where(branch, py * v_cos - px * v_sin, v_middle)
    v_radius = torch.where(branch, 0.7 * v_radius[:, parent], v_radius)
    v_peak = torch.where(branch, v_peak[:, parent] - 100.0, v_peak)
    counts = torch.tensor(VESSEL_COUNTS, device=dev)[factors["vessels"]]
    counts = torch.where(juxta, counts.clamp(min=1), counts)
    inv_edge = (1 / low_mm)[:, None, None]
    mask = torch.zeros_like(field) if with_mask else None
    for j in range(_MAX_VESSELS):
        if not bool((counts > j).any()):
            break
        present = (counts > j).to(dt)[:, None, None]
        across = x * v_cos[:, j, None, None] + (y * v_sin[:, j, None, None]
                                                 - v_offset[:, j, None, None])
        along = (y * v_cos[:, j, None, None] - v_middle[:, j, None, None]) - (
            x * v_sin[:, j, None, None])
        pos = along / v_half_length[:, j, None, None]
        if branch[j]:
            pos = pos.clamp(min=0) - (along * inv_edge).clamp(max=0)  # one-sided, soft start
        # tapering: the radius falls by 40 % from the densest point to either end
        radius = v_radius[:, j, None, None] * (1 - 0.4 * pos.abs().clamp(max=1))
        alpha = across.abs_().sub_(radius).mul_(-inv_edge)
        alpha = alpha.add_(0.5).clamp_(0, 1)
        alpha *= (1 - pos ** 2).clamp_(min=0.0) * present
        field += alpha * (v_peak[:, j, None, None] - field)
        if mask is not None:
            torch.maximum(mask, alpha, out=mask)
    if low == s:
        return field, mask
    resample = _upsample_matrix(s, low, False, str(dev))
    return (resample @ field @ resample.T,
            None if mask is None else resample @ mask @ resample.T)
