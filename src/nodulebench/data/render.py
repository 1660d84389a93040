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
from collections.abc import Callable, Mapping

import torch

from . import geometry, rng
from .anatomy import TEXTURE_GRID, background, draw_context, ramp
from .factors import (
    FACTORS,
    KERNELS,
    LUNG_WINDOW_HU,
    REFERENCE_PATCH_PIXELS,
    SOLID_CORE_HU,
)
from .geometry import ANGLES, CALCIFICATION_BLOBS, shape_slice

__all__ = ["MASK_NAMES", "render_hu", "window"]

#: Keys of the ground-truth mask dict, general to specific: context first, then the nodule
#: (body and spicules), its spicules and its calcification, so that
#: :func:`~nodulebench.probing.mask_energy`, where the last region containing a pixel takes
#: it, scores ``"nodule"`` as the body core and gives vessels inside a nodule to the nodule
#: (``"body"`` equals ``"nodule"`` minus ``"spicules"`` and so receives no share there).
MASK_NAMES: tuple[str, ...] = ("vessels", "pleura", "body", "nodule", "spicules", "calcification")

_SOFT_TISSUE_HU = 40.0
_SHAPE_STREAM = 100
_NOISE_STREAM = 101
_CALCIFICATION_CODES = {name: code for code, name in enumerate(FACTORS["calcification"].categories)}


def window(
    hu: torch.Tensor, low: float = LUNG_WINDOW_HU[0], high: float = LUNG_WINDOW_HU[1]
) -> torch.Tensor:
    """Map HU linearly to ``[0, 1]`` over ``[low, high]``, clamping outside."""
    return ((hu - low) / (high - low)).clamp_(0.0, 1.0)


def _lookup(table: torch.Tensor, pos: torch.Tensor, i0: torch.Tensor) -> torch.Tensor:
    """Periodic linear interpolation of an ``(N, K)`` table at bin position ``pos (N, P)``.

    Linear (not nearest-bin) so that the radius is a continuous function of the angle: a
    last-bit difference in ``atan2`` between devices moves an edge by a last-bit amount.
    """
    frac = pos - i0
    i = i0.long().bitwise_and_(ANGLES - 1)  # "& (K - 1)" wraps negative angles
    return torch.addcmul(
        torch.gather(table, 1, i), frac, torch.gather(table.roll(-1, 1) - table, 1, i)
    )


def spicule_coverage(
    sp: geometry.Spicules,
    dx: torch.Tensor,
    dy: torch.Tensor,
    nearest_bin: torch.Tensor,
    pixel_mm: torch.Tensor,
    dz: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial-volume coverage ``(N, P)`` of each pixel by its nearest spicule, and a mask.

    Across the strand the coverage is the overlap of the cross-section ``[d - w/2, d + w/2]``
    with the pixel's footprint ``[-p/2, p/2]``, divided by ``p``: summed over pixels it
    gives the strand's area whatever ``p``. The mask marks the pixels the strand passes
    through (its centre line within half a pixel, or the pixel centre inside it).

    With ``dz`` (heights above the axial plane of the strands, shaped like ``dx``) a strand
    is a tube of round cross-section: a plane at height ``dz`` cuts it to half-width
    ``sqrt(half^2 - dz^2)``.
    """
    n = dx.shape[0]
    params = sp.table().reshape(n * ANGLES, -1)  # one row per angular bin
    row = nearest_bin.bitwise_and_(ANGLES - 1).add_(
        torch.arange(n, device=dx.device)[:, None] * ANGLES
    )
    picked = params.index_select(0, row.flatten()).reshape(n, -1, params.shape[1])
    cos_a, sin_a, base, length, width, bend, ripple = picked.unbind(-1)
    along = dx * cos_a + dy * sin_a - base
    t = (along / length.clamp(min=1e-6)).clamp_(0.0, 1.0)
    across = dy * cos_a - dx * sin_a - bend * t * t
    half = 0.5 * width * (1 - 0.85 * t) * (1 + 0.2 * torch.sin(3 * math.pi * t + ripple))
    if dz is not None:
        half = torch.sqrt((half * half - dz * dz).clamp_(min=0.0))
    p = pixel_mm.reshape(n, 1)
    overlap = torch.minimum(across + half, 0.5 * p) - torch.maximum(across - half, -0.5 * p)
    cover = overlap.clamp_(min=0.0) / p
    cover *= (along / p + 0.5).clamp_(0.0, 1.0) * ((length - along) / p + 0.5).clamp_(0.0, 1.0)
    inside = (across.abs() < torch.maximum(half, 0.5 * p)) & (along >= 0) & (along <= length)
    return cover, inside & (length > 0)


def calcification_sdf(
    code: torch.Tensor,
    rho: torch.Tensor,
    body_r: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    mean_r: torch.Tensor,
    blob_u: torch.Tensor,
    dz: torch.Tensor | None = None,
) -> torch.Tensor:
    """Signed distance (mm, > 0 inside) to the calcified region of each pattern.

    Central, laminated and diffuse patterns are rings or discs in the body's own radial
    coordinate ``rho = r / r(theta)``; popcorn, eccentric and stippled patterns are blobs:
    five coarse ones, one off-centre disc, or up to twelve fine dots. With ``dz`` (heights
    above the axial plane, shaped like ``dx``) the blobs are balls centred in that plane.
    """
    c = code[:, None, None]
    codes = _CALCIFICATION_CODES
    sdf = torch.full_like(rho, -1e3)
    sdf = torch.where(c == codes["central"], (0.35 - rho) * body_r, sdf)
    sdf = torch.where(
        c == codes["laminated"], torch.maximum(0.07 - (rho - 0.62).abs(), 0.12 - rho) * body_r, sdf
    )
    sdf = torch.where(c == codes["diffuse"], (0.8 - rho) * body_r, sdf)
    blobby = (code == codes["popcorn"]) | (code == codes["eccentric"]) | (code == codes["stippled"])
    pick = torch.nonzero(blobby).flatten()
    if pick.numel():
        k = CALCIFICATION_BLOBS
        u = blob_u[pick]
        cp = code[pick, None]
        r_mean = mean_r[pick, None]
        blob = torch.arange(k, device=code.device)[None, :]
        # popcorn: 5 blobs of 14-22 % of the radius within 60 % of it; eccentric: one disc of
        # 30 % at 50 %; stippled: 12 dots of 0.6-0.9 mm within 75 %
        radius = (
            torch.where(
                cp == codes["popcorn"],
                0.6 * u[:, :k] ** 0.5,
                torch.where(
                    cp == codes["eccentric"], torch.full_like(u[:, :k], 0.5), 0.75 * u[:, :k] ** 0.5
                ),
            )
            * r_mean
        )
        size = torch.where(
            cp == codes["popcorn"],
            (0.14 + 0.08 * u[:, 2 * k :]) * r_mean,
            torch.where(cp == codes["eccentric"], 0.3 * r_mean, 0.6 + 0.3 * u[:, 2 * k :]),
        )
        count = torch.where(cp == codes["popcorn"], 5, torch.where(cp == codes["eccentric"], 1, k))
        size = torch.where(blob < count, size, torch.full_like(size, -1e3))
        angle = 2 * math.pi * u[:, k : 2 * k]
        bx = (radius * torch.cos(angle))[:, :, None, None]
        by = (radius * torch.sin(angle))[:, :, None, None]
        dist2 = (dx[pick, None] - bx) ** 2 + (dy[pick, None] - by) ** 2
        if dz is not None:
            dist2 = dist2 + dz[pick, None] ** 2
        dist = torch.sqrt(dist2)
        sdf[pick] = (size[:, :, None, None] - dist).amax(1)
    return sdf


def render_hu(
    factors: Mapping[str, torch.Tensor],
    seed: int,
    indices: torch.Tensor,
    image_size: int,
    *,
    with_masks: bool = False,
    chunk_size: int = 128,
    window_hu: tuple[float, float] | None = None,
    rescan: int = 0,
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
        rescan: which acquisition of the same object: 0 is the default; ``k >= 1`` draws
            independent acquisition noise (same factors, anatomy and shape noise).

    Returns:
        ``hu`` of shape ``(N, 1, S, S)`` float32 (windowed if asked), and ``None`` or a
        dict with keys :data:`MASK_NAMES` of ``(N, 1, S, S)`` bool masks (before blur and
        noise).
    """
    return render_in_chunks(
        _render_chunk,
        factors,
        seed,
        indices,
        (image_size,) * 2,
        with_masks=with_masks,
        chunk_size=chunk_size,
        window_hu=window_hu,
        rescan=rescan,
    )


#: ``(factors, seed, indices, S, with_masks, out, rescan)`` -> masks or None: renders one
#: chunk's HU into ``out`` (``(n, S, S)`` or ``(n, S, S, S)``).
ChunkRenderer = Callable[
    [Mapping[str, torch.Tensor], int, torch.Tensor, int, bool, torch.Tensor, int],
    "dict[str, torch.Tensor] | None",
]


def render_in_chunks(
    render_chunk: ChunkRenderer,
    factors: Mapping[str, torch.Tensor],
    seed: int,
    indices: torch.Tensor,
    spatial: tuple[int, ...],
    *,
    with_masks: bool,
    chunk_size: int,
    window_hu: tuple[float, float] | None,
    rescan: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Fill ``(N, 1, *spatial)`` outputs chunk by chunk with ``render_chunk``.

    The driver of :func:`render_hu` and of the volume renderer: chunks of ``chunk_size``
    on the CPU (all at once elsewhere), each windowed while it is still in cache.
    """
    dev = factors["diameter_mm"].device
    n = indices.shape[0]
    hu = torch.empty(n, 1, *spatial, device=dev, dtype=torch.float32)
    masks = (
        {k: torch.empty(n, 1, *spatial, device=dev, dtype=torch.bool) for k in MASK_NAMES}
        if with_masks
        else None
    )
    step = n if dev.type != "cpu" else max(1, chunk_size)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        part = {k: v[sl] for k, v in factors.items()}
        out = hu[sl, 0]
        m = render_chunk(part, seed, indices[sl].to(dev), spatial[0], with_masks, out, rescan)
        if window_hu is not None:
            low, high = window_hu
            out.sub_(low).mul_(1.0 / (high - low)).clamp_(0.0, 1.0)
        if masks is not None and m is not None:
            for k in MASK_NAMES:
                masks[k][sl, 0] = m[k]
    return hu, masks


def _render_chunk(
    factors: Mapping[str, torch.Tensor],
    seed: int,
    idx: torch.Tensor,
    s: int,
    with_masks: bool,
    out: torch.Tensor,
    rescan: int = 0,
) -> dict[str, torch.Tensor] | None:
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
    # spicules only where there are some (most benign nodules have none)
    spic_cover = torch.zeros(n, s * s, device=dev, dtype=dt)
    spic_inside = torch.zeros(n, s * s, device=dev, dtype=torch.bool)
    spiky = torch.nonzero(factors["spiculation"] > geometry.SPICULE_ONSET).flatten()
    if spiky.numel():
        k = spiky
        nearest_bin = torch.round(pos[k]).to(torch.int64)
        spic_cover[k], spic_inside[k] = spicule_coverage(
            spic.select(k),
            dx[k].expand(-1, s, s).reshape(k.numel(), -1),
            dy[k].expand(-1, s, s).reshape(k.numel(), -1),
            nearest_bin,
            pixel_mm[k],
        )
    # partial volume: an edge is never sharper than one output pixel
    pv = pixel_mm[:, None, None]
    margin_mm = (0.1 + 2.9 * (1 - f32("margin_sharpness")))[:, None, None]
    edge_mm = torch.sqrt(margin_mm**2 + pv**2)
    alpha_body = ramp(body_r - r, edge_mm)
    spic_cover = spic_cover.reshape(n, s, s)
    alpha_nodule = alpha_body + (1 - alpha_body) * spic_cover  # union of the two covers

    # --- background, on a half-resolution grid: parenchyma + smooth texture + vessels
    noise_key = rng.key_words(seed, idx, _NOISE_STREAM)
    g = TEXTURE_GRID
    # the acquisition works on a replicate-padded grid: a chest wall at one border must not
    # wrap round to the other through the FFT's periodic blur
    pad = max(2, s // 8)
    sp = s + 2 * pad
    half_bins = sp * (sp // 2 + 1)
    white = rng.centered_halves(noise_key, (g * g + 2 * half_bins + 1) // 2, dt)
    behind, vessel_alpha = background(
        factors, shape_u, white[:, : g * g], pixel_mm, s, with_masks, body_k
    )
    wall_alpha = draw_context(factors, shape_u, behind, dx, dy, body_k, pixel_mm)

    # --- nodule: a fill fraction f of dense tissue D, so ground glass adds to what is behind
    dense, fill = nodule_density(factors, 2)
    hu = behind
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
        core_sdf = core_radius[:, None, None] - torch.sqrt((dx[ps] - cx) ** 2 + (dy[ps] - cy) ** 2)
        core = ramp(core_sdf, edge_mm[ps]) * alpha_body[ps]
        hu[ps] += core * (SOLID_CORE_HU - hu[ps])
    calc_sdf = None
    calcified = torch.nonzero(factors["calcification"] != 0).flatten()
    if calcified.numel():
        c = calcified
        calc_sdf = calcification_sdf(
            factors["calcification"][c],
            rho[c],
            body_r[c],
            dx[c],
            dy[c],
            mean_r[c],
            shape_slice(shape_u[c], "calcification"),
        )
        alpha_calc = ramp(calc_sdf, pv[c]) * alpha_body[c]
        hu[c] += alpha_calc * (f32("calcification_hu")[c, None, None] - hu[c])

    if rescan:  # a rescan keeps the texture (anatomy) and redraws the acquisition noise
        white = rng.centered_halves(
            rng.rescan_key(noise_key, rescan), (g * g + 2 * half_bins + 1) // 2, dt
        )
    acquire(factors, hu, white[:, g * g : g * g + 2 * half_bins], pixel_mm, pad, out)

    masks = None
    if with_masks:
        body = r < body_r
        spicules = spic_inside.reshape(n, s, s) & ~body
        calc = torch.zeros_like(body)
        if calc_sdf is not None:
            calc[calcified] = body[calcified] & (calc_sdf > 0)
        # thin vessels cover a pixel partly: mark the pixels they pass through
        vessels = vessel_alpha > 0.25 if vessel_alpha is not None else torch.zeros_like(body)
        masks = {
            "nodule": body | spicules,
            "body": body,
            "spicules": spicules,
            "calcification": calc,
            "vessels": vessels,
            "pleura": wall_alpha > 0.5,
        }
    return masks


def nodule_density(
    factors: Mapping[str, torch.Tensor], dims: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense tissue ``D`` and fill fraction ``f`` of each nodule, shaped ``(N,) + (1,) * dims``.

    A nodule voxel holds a fraction ``f`` of tissue at ``D = max(attenuation, soft
    tissue)``, so blending ``f`` of ``D`` into the parenchyma gives ``attenuation_hu``
    there and ground glass adds density to whatever lies behind it.
    """
    shape = (-1,) + (1,) * dims
    att = factors["attenuation_hu"].to(torch.float32).reshape(shape)
    level = factors["background_hu"].to(torch.float32).reshape(shape)
    dense = torch.clamp(att, min=_SOFT_TISSUE_HU)
    return dense, (att - level) / (dense - level)


def acquire(
    factors: Mapping[str, torch.Tensor],
    hu: torch.Tensor,
    noise_white: torch.Tensor,
    pixel_mm: torch.Tensor,
    pad: int,
    out: torch.Tensor,
) -> None:
    """In-plane acquisition of ``(R, S, S)`` HU slices into ``out``: PSF and noise, one FFT pair.

    The Gaussian point-spread function (``blur_mm`` and the kernel's own ``psf_mm``, in
    quadrature) and noise with the kernel's noise power spectrum, on a grid replicate-padded
    by ``pad`` pixels. The noise is a field of the *acquisition*: its spectrum is fixed in
    cycles per mm (:func:`noise_power`), its standard deviation is ``noise_hu`` on the
    acquisition grid (``pixel_spacing_mm``), and it reaches the output grid by area
    averaging (band-limited), so its grain in mm is the same at every output size and a
    coarser pixel, an average of finer ones, is less noisy. The scanner's calibration
    offset ``hu_offset`` is added last. ``factors`` and ``pixel_mm``
    hold one row per slice; ``noise_white``: ``(R, 2 (S + 2 pad) (S / 2 + pad + 1))``
    centred uniforms.
    """
    dev, dt = hu.device, hu.dtype
    n, s = hu.shape[0], hu.shape[-1]
    sp = s + 2 * pad
    kernel = factors["kernel"]

    def f32(name: str) -> torch.Tensor:
        return factors[name].to(dt)

    psf_mm = torch.tensor([k.psf_mm for k in KERNELS.values()], device=dev, dtype=dt)
    sigma_mm = torch.sqrt(f32("blur_mm") ** 2 + psf_mm[kernel] ** 2)
    fy = torch.fft.fftfreq(sp, device=dev, dtype=dt)[:, None]
    fx = torch.fft.rfftfreq(sp, device=dev, dtype=dt)[None, :]
    freq2_px = fy**2 + fx**2  # (cycles / output pixel)^2
    padded = torch.nn.functional.pad(hu[:, None], (pad, pad, pad, pad), mode="replicate")
    spectrum = torch.fft.rfft2(padded[:, 0], norm="ortho")
    blur_px = sigma_mm / pixel_mm
    spectrum *= torch.exp(freq2_px[None] * (-2 * math.pi**2 * blur_px**2)[:, None, None])
    # centred uniforms times sqrt(6): variance 1/2 per part, unit complex variance
    # slices of a volume share their kernel and spacing: one spectrum per distinct pair
    pairs, inverse = torch.unique(
        torch.stack([kernel.to(dt), f32("pixel_spacing_mm")], 1), dim=0, return_inverse=True
    )
    amp = noise_amplitude(pairs[:, 0].long(), pairs[:, 1], s, sp)[inverse]
    amp *= (math.sqrt(6.0) * f32("noise_hu"))[:, None, None]
    w = torch.view_as_complex(noise_white.reshape(n, sp, sp // 2 + 1, 2))
    spectrum += w * amp
    out.copy_(torch.fft.irfft2(spectrum, s=(sp, sp), norm="ortho")[:, pad : pad + s, pad : pad + s])
    out += f32("hu_offset")[:, None, None]  # the scanner's calibration


def noise_power(kernel: str, frequency_per_mm: torch.Tensor) -> torch.Tensor:
    """The radial shape ``f exp(-(f / f0)^2)`` of a kernel's noise power spectrum.

    Args:
        kernel: a :data:`~nodulebench.data.factors.KERNELS` name.
        frequency_per_mm: radial frequencies ``f`` in cycles per mm, any shape.

    Returns:
        The unnormalised power at each frequency (peak ``f0 / sqrt(2)`` =
        ``nps_peak_per_mm``); the renderer scales it to ``noise_hu`` on the acquisition grid.

    Raises:
        ValueError: an unknown kernel name.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}; got {kernel!r}")
    f0 = math.sqrt(2.0) * KERNELS[kernel].nps_peak_per_mm
    f = frequency_per_mm
    return f * torch.exp(-((f / f0) ** 2))


def noise_amplitude(
    kernel: torch.Tensor, acquisition_mm: torch.Tensor, s: int, size: int
) -> torch.Tensor:
    """``(N, size, size // 2 + 1)`` half-spectrum amplitude of each sample's noise.

    The kernel's power spectrum (:func:`noise_power`, in cycles per mm) on the acquisition
    grid of spacing ``acquisition_mm``, normalised there to unit variance, then brought to
    the ``s``-pixel output grid (pixels ``k = 64 / s`` acquisition pixels wide) by area
    averaging: the transfer ``sinc(k f) / sinc(f)`` per axis (``f`` in cycles per
    acquisition pixel; the exact mean of ``k x k`` pixels for integer ``k``), with the
    power above the output grid's Nyquist frequency folded back (aliased) as sampling folds
    it. A finer output grid interpolates: nothing above the acquisition's Nyquist
    frequency. ``size`` is the padded FFT grid.
    """
    dev = acquisition_mm.device
    grid = _acquisition_grid(size, s, str(dev))  # (aliases, 2, size, size // 2 + 1)
    peaks = torch.tensor([k.nps_peak_per_mm for k in KERNELS.values()], device=dev)
    f0 = math.sqrt(2.0) * peaks[kernel] * acquisition_mm  # cycles per acquisition pixel
    scale = (torch.rsqrt(_band_variance(f0)) * (s / REFERENCE_PATCH_PIXELS))[:, None, None]
    inv = (-1.0 / f0**2)[:, None, None]
    if grid.shape[0] == 1:  # no aliasing: the amplitude factorises, one exp per bin
        return grid[0, 1][None] * torch.exp((0.5 * grid[0, 0] ** 2)[None] * inv) * scale
    power = torch.zeros(kernel.shape[0], *grid.shape[2:], device=dev)
    for alias in grid:
        power += alias[1][None] * torch.exp((alias[0] ** 2)[None] * inv)
    return torch.sqrt(power) * scale


@functools.lru_cache(maxsize=32)
def _acquisition_grid(size: int, s: int, device: str) -> torch.Tensor:
    """``(A, 2, size, size // 2 + 1)`` frequencies and weights of each alias.

    Per alias: the radial frequency in cycles per acquisition pixel and the weight
    ``f |H(f)|^2`` inside the acquisition band (0 outside) of the area-averaging transfer;
    without aliasing (``A = 1``) the weight is ``sqrt(f) |H(f)|``.
    """
    ratio = REFERENCE_PATCH_PIXELS / s  # output pixel in acquisition pixels
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None] / ratio
    fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :] / ratio
    if ratio <= 1:
        f = torch.sqrt(fy**2 + fx**2)
        band = (fy.abs() <= 0.5) & (fx.abs() <= 0.5)
        return torch.stack([f, torch.sqrt(f) * band])[None].float().to(device)
    reach = math.ceil(ratio / 2) + 1
    out = []
    for my in range(-reach, reach + 1):
        for mx in range(-reach, reach + 1):
            ay, ax = fy + my / ratio, fx + mx / ratio
            band = (ay.abs() <= 0.5) & (ax.abs() <= 0.5)
            if not bool(band.any()):
                continue
            transfer = (torch.sinc(ay * ratio) / torch.sinc(ay)) * (
                torch.sinc(ax * ratio) / torch.sinc(ax)
            )
            f = torch.sqrt(ay**2 + ax**2)
            out.append(torch.stack([f, f * transfer**2 * band]))
    return torch.stack(out).float().to(device)


_VARIANCE_TABLE_LOW, _VARIANCE_TABLE_HIGH, _VARIANCE_TABLE_POINTS = 0.02, 3.0, 1024


@functools.lru_cache(maxsize=8)
def _variance_table(device: str) -> torch.Tensor:
    """``∫ f exp(-(f / f0)^2)`` over the acquisition band ``[-1/2, 1/2]^2`` on a grid of ``f0``."""
    f0 = torch.linspace(
        _VARIANCE_TABLE_LOW, _VARIANCE_TABLE_HIGH, _VARIANCE_TABLE_POINTS, dtype=torch.float64
    )
    grid = (torch.arange(128, dtype=torch.float64) + 0.5) / 128 - 0.5  # midpoints
    f2 = (grid[:, None] ** 2 + grid[None, :] ** 2).flatten()
    f = torch.sqrt(f2)
    table = torch.stack([(f * torch.exp(-f2 / b**2)).mean() for b in f0.tolist()])
    return table.float().to(device)


def _band_variance(f0: torch.Tensor) -> torch.Tensor:
    """Variance of the unnormalised spectrum with peak parameter ``f0`` (acquisition px)."""
    table = _variance_table(str(f0.device))
    step = (_VARIANCE_TABLE_HIGH - _VARIANCE_TABLE_LOW) / (_VARIANCE_TABLE_POINTS - 1)
    pos = ((f0.float() - _VARIANCE_TABLE_LOW) / step).clamp(0, _VARIANCE_TABLE_POINTS - 1.001)
    i = pos.long()
    frac = pos - i
    return table[i] + frac * (table[i + 1] - table[i])
