"""Vectorised batch renderer: factors in physical units -> CT-like patches in HU.

The nodule outline is a radius function ``r(theta)`` evaluated once per sample on a 1-D
angular grid (ellipse, lobulation harmonics, spicules, rotation all live there) and looked
up per pixel by linear interpolation; no per-pixel x per-spicule work. Layers, back to front:

1. lung parenchyma at ``background_hu`` plus a smooth texture (bicubic upsampling of a
   coarse white field) and ``vessels`` (soft tubes at soft-tissue density);
2. the nodule body at ``attenuation_hu`` (a solid core for part-solid texture), spicules
   at soft-tissue density, calcification at :data:`CALCIFICATION_HU`; edges are logistic
   ramps whose width follows ``margin_sharpness``;
3. the acquisition: a Gaussian point-spread function of std ``blur_mm`` and band-pass
   CT-like noise of std ``noise_hu``, both applied in one batched FFT.

All randomness is the exogenous noise of :mod:`~nodulebench.data.rng`, keyed by
``(seed, index)``: the factors alone decide what changes between two renders of a sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from . import rng
from .factors import (
    CALCIFICATION_HU,
    LUNG_WINDOW_HU,
    REFERENCE_PATCH_PIXELS,
    SOLID_CORE_HU,
    VESSEL_COUNTS,
)

__all__ = ["MASK_NAMES", "render_hu", "window"]

#: Keys of the ground-truth mask dict.
MASK_NAMES: tuple[str, ...] = ("nodule", "spicules", "calcification")

_ANGLES = 256  # angular grid of r(theta), a power of two (wrap by bit mask)
_HARMONICS = (2, 3, 4, 5)  # lobulation orders
_MAX_SPICULES = 14
_MAX_VESSELS = max(VESSEL_COUNTS)
_POPCORN_BLOBS = 5
_TEXTURE_GRID = 16  # coarse grid of the parenchymal texture across the patch
_SOFT_TISSUE_HU = 40.0
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
_SHAPE_STREAM = 100
_NOISE_STREAM = 101
# shape numbers per sample: harmonics (amp, phase), spicules (angle jitter, length, width,
# first angle), popcorn (radius, angle, size), vessels
_VESSEL_NUMBERS = 6  # per vessel: angle, offset, middle, length, radius, contrast
_N_SHAPE = (2 * len(_HARMONICS) + 3 * _MAX_SPICULES + 1 + 3 * _POPCORN_BLOBS
            + _VESSEL_NUMBERS * _MAX_VESSELS)


def window(hu: torch.Tensor, low: float = LUNG_WINDOW_HU[0],
           high: float = LUNG_WINDOW_HU[1]) -> torch.Tensor:
    """Map HU linearly to ``[0, 1]`` over ``[low, high]``, clamping outside."""
    return ((hu - low) / (high - low)).clamp_(0.0, 1.0)


def _ramp(signed_mm: torch.Tensor, width_mm: torch.Tensor) -> torch.Tensor:
    """Soft inside-indicator: 1 inside (``signed_mm > width/2``), 0.5 on the edge, linear."""
    return (signed_mm / width_mm).add_(0.5).clamp_(0.0, 1.0)


def _outline(factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor, pixel_mm: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Body radius and body+spicule radius on the angular grid, ``(N, K)`` each, in mm."""
    n = shape_u.shape[0]
    dev, dt = shape_u.device, shape_u.dtype
    theta = torch.arange(_ANGLES, device=dev, dtype=dt) * (2 * math.pi / _ANGLES)
    a = factors["diameter_mm"].to(dt)[:, None] / 2
    b = a * factors["sphericity"].to(dt)[:, None]
    phi = theta[None, :] - torch.deg2rad(factors["orientation_deg"].to(dt))[:, None]
    ellipse = a * b / torch.sqrt((b * torch.cos(phi)) ** 2 + (a * torch.sin(phi)) ** 2)
    h = len(_HARMONICS)
    amp = 0.5 + 0.5 * shape_u[:, :h]
    phase = 2 * math.pi * shape_u[:, h:2 * h]
    orders = torch.tensor(_HARMONICS, device=dev, dtype=dt)
    wave = torch.cos(orders[None, :, None] * theta[None, None, :] + phase[:, :, None])
    wave = (amp[:, :, None] * wave).sum(1) / amp.sum(1, keepdim=True)
    body = ellipse * (1 + 0.35 * factors["lobulation"].to(dt)[:, None] * wave)

    # spicules: tapered spikes on r(theta); spicule j exists when j < spiculation * max
    s0 = 2 * h
    jitter = shape_u[:, s0:s0 + _MAX_SPICULES] - 0.5
    length_u = shape_u[:, s0 + _MAX_SPICULES:s0 + 2 * _MAX_SPICULES]
    width_u = shape_u[:, s0 + 2 * _MAX_SPICULES:s0 + 3 * _MAX_SPICULES]
    first = 2 * math.pi * shape_u[:, s0 + 3 * _MAX_SPICULES:s0 + 3 * _MAX_SPICULES + 1]
    j = torch.arange(_MAX_SPICULES, device=dev, dtype=dt)
    spic = factors["spiculation"].to(dt)[:, None]
    active = (j[None, :] < spic * _MAX_SPICULES).to(dt)
    angle = first + j[None, :] * _GOLDEN_ANGLE + 0.4 * jitter
    mean_radius = body.mean(1, keepdim=True)
    length = ((0.3 + 0.9 * spic) * mean_radius + 2.5 * spic) * (0.6 + 0.8 * length_u) * active
    # half-width at the base, never thinner than one output pixel so it survives sampling
    half_width_mm = torch.maximum(0.5 + 0.5 * width_u, pixel_mm[:, None].to(dt))
    base_idx = (angle % (2 * math.pi)) * (_ANGLES / (2 * math.pi))
    base_r = torch.gather(body, 1, base_idx.long().clamp_(0, _ANGLES - 1))
    half_angle = half_width_mm / base_r
    delta = theta[None, None, :] - angle[:, :, None]
    delta = delta - (2 * math.pi) * torch.round(delta * (1 / (2 * math.pi)))
    taper = (1 - delta.abs() / half_angle[:, :, None]).clamp_(min=0.0)
    # outside its angular window (or when absent) a spike contributes nothing
    inside = (taper > 0) & (active > 0)[:, :, None]
    spikes = ((base_r[:, :, None] + length[:, :, None] * taper) * inside).amax(1)
    del n
    return body, torch.maximum(body, spikes)


def _lookup_pair(body: torch.Tensor, total: torch.Tensor, angle: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodic linear interpolation of two ``(N, K)`` tables at ``angle (N, P)`` radians.

    Linear (not nearest-bin) so that the radius is a continuous function of the angle: a
    last-bit difference in ``atan2`` between devices moves an edge by a last-bit amount.
    """
    pos = angle.mul_(_ANGLES / (2 * math.pi))
    base = torch.floor(pos)
    frac = pos.sub_(base)
    i0 = base.long().bitwise_and_(_ANGLES - 1)  # "& (K - 1)" wraps negative angles
    body_r, total_r = (
        torch.addcmul(torch.gather(t, 1, i0), frac, torch.gather(t.roll(-1, 1) - t, 1, i0))
        for t in (body, total)
    )
    return body_r, total_r


def _calcification_sdf(code: torch.Tensor, rho: torch.Tensor, body_r: torch.Tensor,
                       dx: torch.Tensor, dy: torch.Tensor, mean_r: torch.Tensor,
                       popcorn_u: torch.Tensor) -> torch.Tensor:
    """Signed distance (mm, > 0 inside) to the calcified region of each pattern.

    Codes follow ``FACTORS["calcification"].categories``: absent, central, laminated,
    popcorn, diffuse.
    """
    c = code[:, None, None]
    central = (0.35 - rho) * body_r
    laminated = torch.maximum(0.07 - (rho - 0.62).abs(), 0.12 - rho) * body_r
    diffuse = (0.8 - rho) * body_r
    sdf = torch.full_like(rho, -1e3)
    sdf = torch.where(c == 1, central, sdf)
    sdf = torch.where(c == 2, laminated, sdf)
    sdf = torch.where(c == 4, diffuse, sdf)
    pop = torch.nonzero(code == 3).flatten()
    if pop.numel():
        k = _POPCORN_BLOBS
        radius = 0.6 * popcorn_u[pop, :k] ** 0.5 * mean_r[pop, None]
        angle = 2 * math.pi * popcorn_u[pop, k:2 * k]
        size = (0.14 + 0.08 * popcorn_u[pop, 2 * k:3 * k]) * mean_r[pop, None]
        bx = (radius * torch.cos(angle))[:, :, None, None]
        by = (radius * torch.sin(angle))[:, :, None, None]
        dist = torch.sqrt((dx[pop, None] - bx) ** 2 + (dy[pop, None] - by) ** 2)
        sdf[pop] = (size[:, :, None, None] - dist).amax(1)
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
    shape_u = rng.uniform(rng.key_words(seed, idx, _SHAPE_STREAM), _N_SHAPE, dt)

    def f32(name: str) -> torch.Tensor:
        return factors[name].to(dt)

    pixel_mm = f32("pixel_spacing_mm") * (REFERENCE_PATCH_PIXELS / s)
    coords = torch.arange(s, device=dev, dtype=dt) - (s - 1) / 2
    x = coords[None, None, :] * pixel_mm[:, None, None]  # (N, 1, S), x to the right
    y = -coords[None, :, None] * pixel_mm[:, None, None]  # (N, S, 1), y upwards
    dx = x - f32("offset_x_mm")[:, None, None]
    dy = y - f32("offset_y_mm")[:, None, None]
    r = torch.sqrt(dx * dx + dy * dy)  # (N, S, S)
    # nearest bin of the fine angular grid; "& (K - 1)" wraps negative angles (K = 2^k)
    body_k, total_k = _outline(factors, shape_u, pixel_mm)
    body_r, total_r = _lookup_pair(body_k, total_k, torch.atan2(dy, dx).reshape(n, -1))
    body_r, total_r = body_r.reshape(n, s, s), total_r.reshape(n, s, s)
    edge_mm = (0.1 + 2.9 * (1 - f32("margin_sharpness")))[:, None, None]
    alpha_body = _ramp(body_r - r, edge_mm)
    alpha_total = _ramp(total_r - r, edge_mm)

    # --- background, on a half-resolution grid: parenchyma + smooth texture + vessels
    noise_key = rng.key_words(seed, idx, _NOISE_STREAM)
    g = _TEXTURE_GRID
    half_bins = s * (s // 2 + 1)
    white = rng.centered_halves(noise_key, (g * g + 2 * half_bins + 1) // 2, dt)
    background = _background(factors, shape_u, white[:, :g * g], pixel_mm, s)

    # --- nodule: body (solid core if part-solid), spicules, calcification
    att = f32("attenuation_hu")[:, None, None]
    spicule_hu = torch.clamp(att, min=0.0)
    # hu = bg (1 - a_total) + spicule_hu (a_total - a_body) + body_hu a_body
    hu = background
    hu += alpha_total * (spicule_hu - hu)
    hu += alpha_body * (att - spicule_hu)
    rho = r / body_r
    ps = torch.nonzero(factors["texture"] == 1).flatten()
    if ps.numel():
        core = _ramp((0.45 - rho[ps]) * body_r[ps], edge_mm[ps])
        hu[ps] += (alpha_body[ps] * core) * (SOLID_CORE_HU - att[ps])
    calc_sdf = None
    calcified = torch.nonzero(factors["calcification"] != 0).flatten()
    if calcified.numel():
        p0 = 2 * len(_HARMONICS) + 3 * _MAX_SPICULES + 1
        c = calcified
        calc_sdf = _calcification_sdf(factors["calcification"][c], rho[c], body_r[c], dx[c],
                                      dy[c], body_k[c].mean(1),
                                      shape_u[c, p0:p0 + 3 * _POPCORN_BLOBS])
        alpha_calc = _ramp(calc_sdf, (0.7 * pixel_mm[c])[:, None, None]) * alpha_body[c]
        hu[c] += alpha_calc * (CALCIFICATION_HU - hu[c])

    # --- acquisition: Gaussian PSF and band-pass noise, one FFT pair
    fy = torch.fft.fftfreq(s, device=dev, dtype=dt)[:, None]
    fx = torch.fft.rfftfreq(s, device=dev, dtype=dt)[None, :]
    freq2_px = fy ** 2 + fx ** 2  # (cycles / output pixel)^2
    spectrum = torch.fft.rfft2(hu, norm="ortho")
    blur_px = f32("blur_mm") / pixel_mm
    spectrum *= torch.exp(freq2_px[None] * (-2 * math.pi ** 2 * blur_px ** 2)[:, None, None])
    # centred uniforms times sqrt(6): variance 1/2 per part, unit complex variance
    amp = _noise_amplitude(s, str(dev)) * (math.sqrt(6.0) * f32("noise_hu"))[:, None, None]
    w = torch.view_as_complex(white[:, g * g:g * g + 2 * half_bins].reshape(n, s, s // 2 + 1, 2))
    spectrum += w * amp
    torch.fft.irfft2(spectrum, s=(s, s), norm="ortho", out=out)

    masks = None
    if with_masks:
        nodule = r < total_r
        body = r < body_r
        calc = torch.zeros_like(body)
        if calc_sdf is not None:
            calc[calcified] = body[calcified] & (calc_sdf > 0)
        masks = {"nodule": nodule, "spicules": nodule & ~body, "calcification": calc}
    return masks


@functools.lru_cache(maxsize=32)
def _noise_amplitude(s: int, device: str) -> torch.Tensor:
    """``(S, S // 2 + 1)`` amplitude of unit-std CT-like noise on the half spectrum.

    The noise power spectrum is ``f exp(-(f / f0)^2)`` with ``f0 = 0.25`` cycles per
    *acquisition* pixel, so the grain follows the acquisition spacing; in output pixels
    ``f0 = 0.25 * S / 64`` whatever the spacing. Normalised on the full frequency grid so
    that the image-domain standard deviation is 1 (with ``norm="ortho"`` FFTs).
    """
    f0 = 0.25 * s / REFERENCE_PATCH_PIXELS
    full = torch.fft.fftfreq(s, dtype=torch.float64)
    full2 = full[:, None] ** 2 + full[None, :] ** 2
    norm = torch.sqrt((torch.sqrt(full2) * torch.exp(-full2 / f0 ** 2)).mean())
    half2 = full2[:, : s // 2 + 1]
    amp = torch.sqrt(torch.sqrt(half2) * torch.exp(-half2 / f0 ** 2)) / norm
    return amp.float().to(device)


def _background(factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor,
                coarse_white: torch.Tensor, pixel_mm: torch.Tensor, s: int) -> torch.Tensor:
    """Parenchyma, texture and vessels in HU, ``(N, S, S)``.

    Drawn on a half-resolution grid (vessels are 1-3 mm wide, the texture is smoother) and
    resampled linearly: a quarter of the per-pixel work.
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
    v0 = 2 * len(_HARMONICS) + 3 * _MAX_SPICULES + 1 + 3 * _POPCORN_BLOBS
    vu = shape_u[:, v0:v0 + _VESSEL_NUMBERS * _MAX_VESSELS].reshape(n, _VESSEL_NUMBERS, -1)
    fov = pixel_mm * s
    v_cos, v_sin = torch.cos(math.pi * vu[:, 0]), torch.sin(math.pi * vu[:, 0])
    v_offset = (vu[:, 1] - 0.5) * 0.8 * fov[:, None]  # distance of the axis from the centre
    v_middle = (vu[:, 2] - 0.5) * 0.8 * fov[:, None]  # where along the axis it is densest
    v_half_length = (0.25 + 0.5 * vu[:, 3]) * fov[:, None]
    v_radius = 0.35 + 0.55 * vu[:, 4]
    # small vessels are partial-volume averaged: peak contrast below soft tissue
    v_peak = -450.0 + 450.0 * vu[:, 5]
    counts = torch.tensor(VESSEL_COUNTS, device=dev)[factors["vessels"]]
    inv_edge = (1 / low_mm)[:, None, None]
    for j in range(_MAX_VESSELS):
        if not bool((counts > j).any()):
            break
        present = (counts > j).to(dt)[:, None, None]
        across = x * v_cos[:, j, None, None] + (y * v_sin[:, j, None, None]
                                                 - v_offset[:, j, None, None])
        along = (y * v_cos[:, j, None, None] - v_middle[:, j, None, None]) - (
            x * v_sin[:, j, None, None])
        alpha = across.abs_().sub_(v_radius[:, j, None, None]).mul_(-inv_edge)
        alpha = alpha.add_(0.5).clamp_(0, 1)
        fade = (1 - (along / v_half_length[:, j, None, None]) ** 2).clamp_(min=0.0)
        alpha *= fade * present
        field += alpha * (v_peak[:, j, None, None] - field)
    if low == s:
        return field
    resample = _upsample_matrix(s, low, False, str(dev))
    return resample @ field @ resample.T
