"""Volume sampler: the nodule description of :mod:`~nodulebench.data.geometry` on voxels.

The same description as the 2-D renderer (:mod:`~nodulebench.data.render`), sampled on a
cube of ``S^3`` voxels of the in-plane pixel size, with the nodule centre in slice
``S // 2``. The description is extended to 3-D so that its cut by that slice is the 2-D
description, exactly:

- the body outline ``r(theta)`` becomes ``r(theta, psi)`` on a 2-D angular grid
  (:data:`ELEVATIONS` elevations ``psi`` by ``ANGLES`` azimuths, bilinear lookup): an
  ellipsoid whose in-plane axes are the 2-D ellipse and whose third axis lies between its
  minor and major axes, times lobulation harmonics that are the 2-D ones at the equator
  (sectoral harmonics ``cos^k(psi) cos(k theta + p_k)``) plus tilted ones that vanish there
  (``cos^(k-1)(psi) sin(psi) cos((k-1) theta + q_k)``); the equator row is the 2-D outline;
- spicules are round tapered tubes: the 2-D set lies in the axial plane through the
  nodule centre, and :data:`OBLIQUE_PER_IN_PLANE` times as many *oblique* spicules (the
  same length, width, taper, bend and ripple formulas of ``spiculation``, their own
  exogenous numbers) leave the body in directions uniform on the sphere outside +-12
  degrees of elevation, alternately up and down, golden-angle spaced in azimuth;
  their partial volume is a radial ramp one voxel wide scaled to conserve the tube's
  cross-section area. They are drawn outside the central slice only, which keeps that
  slice the 2-D section;
- vessels and the solid core are round tubes and balls whose axes and centres lie in the
  axial plane through the nodule centre; calcification blobs are balls centred there;
- the pleura (a cylinder along z: the thorax) and the fissure (a plane) are their 2-D
  curves extruded along z;
- the parenchymal texture is interpolated along z between coarse 2-D fields spaced twice
  as far apart as its in-plane nodes, with weights ``cos``/``sin`` of a quarter turn
  (constant variance; about the same mean change from slice to slice as from pixel to
  pixel in-plane); the field at the nodule centre is the 2-D one.

The acquisition is the 2-D one slice by slice (in-plane PSF and kernel-shaped noise,
independent between slices) after a slice sensitivity profile along z: a Gaussian of full
width at half maximum ``slice_thickness_mm``, sampled at the voxel spacing and truncated
smoothly at three standard deviations. A profile whose standard deviation is under a
third of a voxel (a full width under 0.78 voxel) is the identity, so the central slice of
a volume is the sample's 2-D image up to float rounding (same noise keys, same
operations); thicker slices differ from it by the profile only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from . import geometry, rng
from .anatomy import TEXTURE_GRID, background, draw_context, ramp
from .factors import REFERENCE_PATCH_PIXELS, SOLID_CORE_HU
from .geometry import ANGLES, HARMONICS, shape_slice
from .render import (
    acquire,
    calcification_sdf,
    nodule_density,
    render_in_chunks,
    spicule_coverage,
)

__all__ = ["ELEVATIONS", "body_radius_3d", "render_volume_hu"]

#: Elevations of the angular grid of ``r(theta, psi)`` over ``[-pi/2, pi/2]``; odd, so the
#: equator (the 2-D outline) is a grid row.
ELEVATIONS = 65
_SHAPE_STREAM = 100  # the 2-D shape numbers (geometry.SHAPE_SLOTS)
_NOISE_STREAM = 101  # the 2-D texture and noise field, here the central slice's
_SHAPE3_STREAM = 102  # numbers only a volume uses
_OBLIQUE = 1 + 2 * len(HARMONICS)  # after the third axis and the tilted harmonics
#: Oblique spicules per in-plane one: the axial plane holds one set, the rest of the sphere
#: this many, so that a volume's spicules radiate in every direction.
OBLIQUE_PER_IN_PLANE = 3
_SHAPE3_NUMBERS = _OBLIQUE + 1 + 6 * OBLIQUE_PER_IN_PLANE * geometry.MAX_SPICULES
_FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
_SSP_CUTOFF = 3.0  # profile truncated (smoothly) at this many standard deviations


def body_radius_3d(
    factors: Mapping[str, torch.Tensor],
    shape_u: torch.Tensor,
    shape3_u: torch.Tensor,
    body_k: torch.Tensor,
) -> torch.Tensor:
    """Body radius on the 2-D angular grid, ``(N, ELEVATIONS, ANGLES)`` in mm.

    ``body_k``: the 2-D outline :func:`~nodulebench.data.geometry.body_radius`, copied into
    the equator row so that the central slice cuts the 2-D body bit for bit.
    """
    dev, dt = shape_u.device, shape_u.dtype
    theta = torch.arange(ANGLES, device=dev, dtype=dt) * (2 * math.pi / ANGLES)
    psi = torch.linspace(-math.pi / 2, math.pi / 2, ELEVATIONS, device=dev, dtype=dt)
    cos_psi, sin_psi = torch.cos(psi)[None, :, None], torch.sin(psi)[None, :, None]
    a = factors["diameter_mm"].to(dt)[:, None] / 2
    b = a * factors["sphericity"].to(dt)[:, None]
    c = b + (a - b) * shape3_u[:, :1]
    phi = theta[None, :] - torch.deg2rad(factors["orientation_deg"].to(dt))[:, None]
    in_plane = (torch.cos(phi) / a) ** 2 + (torch.sin(phi) / b) ** 2  # (N, K)
    inv2 = cos_psi**2 * in_plane[:, None, :] + sin_psi**2 / (c**2)[:, :, None]
    ellipsoid = torch.rsqrt(inv2)
    h = len(HARMONICS)
    amp = 0.5 + 0.5 * shape_slice(shape_u, "harmonic_amplitude")  # (N, H)
    phase = 2 * math.pi * shape_slice(shape_u, "harmonic_phase")
    tilt = 2 * shape3_u[:, 1 : 1 + h] - 1  # in [-1, 1]: |wave| <= 1 as in 2-D
    tilt_phase = 2 * math.pi * shape3_u[:, 1 + h : 1 + 2 * h]
    wave = torch.zeros_like(ellipsoid)
    for j, k in enumerate(HARMONICS):
        sectoral = torch.cos(k * theta[None, :] + phase[:, j, None])[:, None, :]
        tilted = (tilt[:, j, None] * torch.cos((k - 1) * theta[None, :] + tilt_phase[:, j, None]))[
            :, None, :
        ]
        wave += amp[:, j, None, None] * cos_psi ** (k - 1) * (cos_psi * sectoral + sin_psi * tilted)
    wave /= amp.sum(1)[:, None, None]
    radius = ellipsoid * (1 + 0.35 * factors["lobulation"].to(dt)[:, None, None] * wave)
    radius[:, ELEVATIONS // 2] = body_k
    return radius


def _lookup_3d(
    table: torch.Tensor, pos: torch.Tensor, i0: torch.Tensor, elevation: torch.Tensor
) -> torch.Tensor:
    """Bilinear lookup of ``(N, E, K)`` at azimuth bins ``pos (N, P)`` and ``elevation``.

    ``elevation``: ``(N, D, P)`` radians; the result is ``(N, D, P)``. Azimuth is
    interpolated exactly as the 2-D lookup does, so the equator row reproduces it.
    """
    n, e, k = table.shape
    d = elevation.shape[1]
    frac = (pos - i0)[:, None, :]
    i = i0.long().bitwise_and_(k - 1)[:, None, :]
    step = (table.roll(-1, 2) - table).reshape(n, -1)
    flat = table.reshape(n, -1)
    epos = elevation * ((e - 1) / math.pi) + (e - 1) / 2  # the equator lands on (e-1)/2
    j0 = torch.floor(epos).clamp_(0, e - 2)
    efrac = epos - j0
    row = j0.long() * k + i  # (N, D, P)

    def at(index: torch.Tensor) -> torch.Tensor:
        flat_index = index.reshape(n, -1)
        return torch.addcmul(
            torch.gather(flat, 1, flat_index),
            frac.expand(-1, d, -1).reshape(n, -1),
            torch.gather(step, 1, flat_index),
        ).reshape(n, d, -1)

    low = at(row)
    return torch.addcmul(low, efrac, at(row + k) - low)


def _oblique_spicules(
    factors: Mapping[str, torch.Tensor],
    shape3_u: torch.Tensor,
    table: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    dz: torch.Tensor,
    pixel_mm: torch.Tensor,
    azimuth_pos: torch.Tensor,
    elevation: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage ``(N, D, S, S)`` of the oblique spicules and the voxels they pass through.

    ``dx (N, 1, 1, S)``, ``dy (N, 1, S, 1)``, ``dz (N, D, 1, 1)``: voxel centres relative
    to the nodule centre in mm; ``table``: the body radius ``(N, E, K)``; ``azimuth_pos``
    ``(N, S * S)`` and ``elevation`` ``(N, D, S * S)``: each voxel's direction from the
    centre, in azimuth bins and radians. As in 2-D, a voxel meets at most the spicule whose
    axis direction is nearest to its own (looked up on the angular grid), so the cost does
    not grow with the number of spicules.
    """
    n, e, k = table.shape
    dev, dt = dx.device, dx.dtype
    j_count = OBLIQUE_PER_IN_PLANE * geometry.MAX_SPICULES
    j = torch.arange(j_count, device=dev, dtype=dt)

    def numbers(i: int) -> torch.Tensor:
        lo = _OBLIQUE + 1 + i * j_count
        return shape3_u[:, lo : lo + j_count]

    s = factors["spiculation"].to(dt)[:, None]
    # each in-plane onset has OBLIQUE_PER_IN_PLANE oblique partners
    onset = geometry.SPICULE_ONSET + geometry.SPICULE_STEP * torch.div(
        j, OBLIQUE_PER_IN_PLANE, rounding_mode="floor"
    )
    grown = ((s - onset[None, :]) / geometry.SPICULE_GROWTH).clamp(0.0, 1.0)
    length = (2 + 8 * s) * (0.6 + 0.8 * numbers(2)) * grown
    width = 0.5 + numbers(3)
    bend = 0.4 * (numbers(4) - 0.5) * length
    ripple = 2 * math.pi * numbers(5)
    azimuth = (
        2 * math.pi * shape3_u[:, _OBLIQUE, None]
        + j * geometry.GOLDEN_ANGLE
        + 0.15 * (numbers(0) - 0.5)
    ) % (2 * math.pi)
    up = torch.where(j % 2 == 0, 1.0, -1.0).to(dt)
    # directions uniform on the sphere outside a band of +-12 degrees round the axial
    # plane (which the in-plane set holds): sin(psi) uniform in [sin 12, sin 85]
    low, high = math.sin(math.radians(12.0)), math.sin(math.radians(85.0))
    psi = up * torch.asin(low + (high - low) * numbers(1))
    azimuth_bin = torch.round(azimuth * (k / (2 * math.pi))).long().bitwise_and_(k - 1)
    elevation_bin = torch.round((psi + math.pi / 2) * ((e - 1) / math.pi)).long()
    radius = torch.gather(table.reshape(n, -1), 1, elevation_bin * k + azimuth_bin)
    base = torch.maximum(radius - 1.0, 0.5 * radius)  # start inside the body, as in 2-D
    cos_psi, sin_psi = torch.cos(psi), torch.sin(psi)
    axis = torch.stack(
        (cos_psi * torch.cos(azimuth), cos_psi * torch.sin(azimuth), sin_psi), -1
    )  # (N, J, 3) as (x, y, z)
    sideways = torch.stack(
        (-sin_psi * torch.cos(azimuth), -sin_psi * torch.sin(azimuth), cos_psi), -1
    )
    # nearest present spicule of each direction of the angular grid
    theta = torch.arange(k, device=dev, dtype=dt) * (2 * math.pi / k)
    grid_psi = torch.linspace(-math.pi / 2, math.pi / 2, e, device=dev, dtype=dt)
    grid = torch.stack(
        (
            torch.cos(grid_psi)[:, None] * torch.cos(theta)[None, :],
            torch.cos(grid_psi)[:, None] * torch.sin(theta)[None, :],
            torch.sin(grid_psi)[:, None].expand(-1, k),
        ),
        -1,
    ).reshape(-1, 3)
    alignment = torch.einsum("gc,njc->ngj", grid, axis) - 10.0 * (length <= 0)[:, None, :]
    nearest = alignment.argmax(2)  # (N, E * K)
    epos = torch.round(elevation * ((e - 1) / math.pi) + (e - 1) / 2).long()
    direction = epos * k + torch.round(azimuth_pos).long().bitwise_and_(k - 1)[:, None, :]
    voxel_spicule = torch.gather(nearest, 1, direction.reshape(n, -1))  # (N, V)
    params = torch.cat(
        (axis, sideways, torch.stack((base, length, width, bend, ripple), -1)), -1
    )  # (N, J, 11)
    rows = voxel_spicule + torch.arange(n, device=dev)[:, None] * j_count
    picked = (
        params.reshape(n * j_count, -1)
        .index_select(0, rows.flatten())
        .reshape(n, -1, params.shape[-1])
    )
    ux, uy, uz, wx, wy, wz, b0, ell, w0, bnd, rip = picked.unbind(-1)
    d = dz.shape[1]
    shape = (n, d, dy.shape[2], dx.shape[3])
    x, y, z = (t.expand(shape).reshape(n, -1) for t in (dx, dy, dz))
    along = x * ux + y * uy + z * uz - b0
    t = (along / ell.clamp(min=1e-6)).clamp_(0.0, 1.0)
    off = bnd * t * t
    reach = b0 + along
    rho = torch.sqrt(
        (x - reach * ux - off * wx) ** 2
        + (y - reach * uy - off * wy) ** 2
        + (z - reach * uz - off * wz) ** 2
    )
    half = 0.5 * w0 * (1 - 0.85 * t) * (1 + 0.2 * torch.sin(3 * math.pi * t + rip))
    p = pixel_mm[:, None]
    # a ramp one voxel wide holds pi (half^2 + p^2 / 12) of cross-section, or
    # pi (half + p / 2)^3 / (3 p) when thinner than a voxel: scale to pi half^2
    conserve = torch.where(
        half >= 0.5 * p, half**2 / (half**2 + p**2 / 12), 3 * p * half**2 / (half + 0.5 * p) ** 3
    )
    cover = ramp(half - rho, p) * (conserve * (ell > 0))
    cover *= (along / p + 0.5).clamp_(0.0, 1.0) * ((ell - along) / p + 0.5).clamp_(0.0, 1.0)
    inside = (rho < torch.maximum(half, 0.5 * p)) & (along >= 0) & (along <= ell) & (ell > 0)
    off_centre = z != 0
    return (cover * off_centre).reshape(shape), (inside & off_centre).reshape(shape)


def _slice_keys(seed: int, idx: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` noise key per slice; the slice at offset 0 has the 2-D image's key."""
    key0 = rng.key_words(seed, idx, _NOISE_STREAM)
    salt = rng.hash32((offsets + 0x5BD1E995).to(torch.int32))
    return torch.where(
        offsets[None, :] == 0, key0[:, None], rng.hash32(key0[:, None] ^ salt[None, :])
    )


def _slice_profile(
    hu: torch.Tensor, thickness_mm: torch.Tensor, voxel_mm: torch.Tensor
) -> torch.Tensor:
    """Convolve ``(N, D, S, S)`` along z with each sample's slice sensitivity profile.

    A Gaussian of FWHM ``thickness_mm`` sampled at the voxel spacing, minus its value at
    three standard deviations (so it reaches zero continuously as the thickness shrinks),
    normalised to unit sum; slices beyond the volume repeat its end slices.
    """
    d = hu.shape[1]
    sigma = (thickness_mm / _FWHM_PER_SIGMA) / voxel_mm  # (N,) in voxels
    reach = min(d - 1, math.floor(_SSP_CUTOFF * float(sigma.max())))
    if reach < 1:
        return hu
    offsets = torch.arange(-reach, reach + 1, device=hu.device, dtype=hu.dtype)
    weights = (
        torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2) - math.exp(-0.5 * _SSP_CUTOFF**2)
    ).clamp_(min=0.0)
    weights /= weights.sum(1, keepdim=True)
    out = torch.zeros_like(hu)
    slices = torch.arange(d, device=hu.device)
    for j in range(2 * reach + 1):
        w = weights[:, j]
        if not bool((w > 0).any()):
            continue
        source = (slices + (j - reach)).clamp_(0, d - 1)
        out.addcmul_(hu.index_select(1, source), w[:, None, None, None])
    return out


def render_volume_hu(
    factors: Mapping[str, torch.Tensor],
    seed: int,
    indices: torch.Tensor,
    volume_size: int,
    *,
    with_masks: bool = False,
    chunk_size: int = 8,
    window_hu: tuple[float, float] | None = None,
    rescan: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Render a batch of volumes in HU (or windowed to ``[0, 1]``).

    Args:
        factors: name -> ``(N,)`` tensor on the target device, every factor.
        seed: dataset seed; with ``indices`` it keys the exogenous noise.
        indices: ``(N,)`` int64 sample indices.
        volume_size: voxels ``S`` along each axis; voxels are cubes of the in-plane pixel
            size ``pixel_spacing_mm * 64 / S``.
        with_masks: also return the ground-truth masks.
        chunk_size: volumes rendered together on the CPU; does not change the result.
        window_hu: when given, map ``[low, high]`` HU to ``[0, 1]``.
        rescan: which acquisition of the same object (0: the default; ``k >= 1``:
            independent acquisition noise in every slice, same anatomy).

    Returns:
        ``(N, 1, S, S, S)`` float32 volumes (axes z, y, x; z upwards from slice 0), and
        ``None`` or a dict with keys :data:`~nodulebench.data.render.MASK_NAMES` of bool
        masks of that shape (before the slice profile, blur and noise).
    """
    return render_in_chunks(
        _render_chunk,
        factors,
        seed,
        indices,
        (volume_size,) * 3,
        with_masks=with_masks,
        chunk_size=chunk_size,
        window_hu=window_hu,
        rescan=rescan,
    )


def _render_chunk(
    factors: Mapping[str, torch.Tensor],
    seed: int,
    idx: torch.Tensor,
    s: int,
    with_masks: bool,
    out: torch.Tensor,
    rescan: int = 0,
) -> dict[str, torch.Tensor] | None:
    """Render ``(n, S, S, S)`` HU into ``out``; return the masks when asked."""
    dev, dt = idx.device, torch.float32
    n, d = idx.shape[0], s
    shape_u = rng.uniform(rng.key_words(seed, idx, _SHAPE_STREAM), geometry.SHAPE_NUMBERS, dt)
    shape3_u = rng.uniform(rng.key_words(seed, idx, _SHAPE3_STREAM), _SHAPE3_NUMBERS, dt)

    def f32(name: str) -> torch.Tensor:
        return factors[name].to(dt)

    pixel_mm = f32("pixel_spacing_mm") * (REFERENCE_PATCH_PIXELS / s)
    coords = torch.arange(s, device=dev, dtype=dt) - (s - 1) / 2
    x = coords[None, None, :] * pixel_mm[:, None, None]
    y = -coords[None, :, None] * pixel_mm[:, None, None]
    dx = x - f32("offset_x_mm")[:, None, None]  # (n, 1, S)
    dy = y - f32("offset_y_mm")[:, None, None]  # (n, S, 1)
    offsets = torch.arange(d, device=dev) - d // 2  # slice d // 2 holds the nodule centre
    z = offsets.to(dt)[None, :] * pixel_mm[:, None]  # (n, D) in mm
    dz = z[:, :, None, None]
    rxy2 = dx * dx + dy * dy
    r_plane = torch.sqrt(rxy2)  # (n, S, S)
    r = torch.sqrt(rxy2[:, None] + dz * dz)  # (n, D, S, S)
    angle = torch.atan2(dy, dx).reshape(n, -1)
    elevation = torch.atan2(dz.expand(-1, -1, s, s), r_plane[:, None].expand(-1, d, -1, -1))
    body_k = geometry.body_radius(factors, shape_u)
    table = body_radius_3d(factors, shape_u, shape3_u, body_k)
    pos = angle * (ANGLES / (2 * math.pi))
    i0 = torch.floor(pos)
    body_r = _lookup_3d(table, pos, i0, elevation.reshape(n, d, -1)).reshape(n, d, s, s)
    spic = geometry.spicules(factors, shape_u, body_k)
    voxels = d * s * s
    spic_cover = torch.zeros(n, voxels, device=dev, dtype=dt)
    spic_inside = torch.zeros(n, voxels, device=dev, dtype=torch.bool)
    spiky = torch.nonzero(factors["spiculation"] > geometry.SPICULE_ONSET).flatten()
    if spiky.numel():
        k = spiky
        m = k.numel()
        nearest_bin = torch.round(pos[k]).to(torch.int64)[:, None].expand(-1, d, -1)
        spic_cover[k], spic_inside[k] = spicule_coverage(
            spic.select(k),
            dx[k, None].expand(-1, d, s, s).reshape(m, -1),
            dy[k, None].expand(-1, d, s, s).reshape(m, -1),
            nearest_bin.reshape(m, -1),
            pixel_mm[k],
            dz=dz[k].expand(-1, d, s, s).reshape(m, -1),
        )
        cover, inside = _oblique_spicules(
            {"spiculation": factors["spiculation"][k]},
            shape3_u[k],
            table[k],
            dx[k, None],
            dy[k, None],
            dz[k],
            pixel_mm[k],
            pos[k],
            elevation[k].reshape(m, d, -1),
        )
        in_plane = spic_cover[k]
        spic_cover[k] = in_plane + (1 - in_plane) * cover.reshape(m, -1)
        spic_inside[k] |= inside.reshape(m, -1)
    pv = pixel_mm[:, None, None, None]
    margin_mm = (0.1 + 2.9 * (1 - f32("margin_sharpness")))[:, None, None, None]
    edge_mm = torch.sqrt(margin_mm**2 + pv**2)
    alpha_body = ramp(body_r - r, edge_mm)
    alpha_nodule = alpha_body + (1 - alpha_body) * spic_cover.reshape(n, d, s, s)

    # --- background slice by slice (one row per slice): texture, vessels, pleura, fissure
    g = TEXTURE_GRID
    pad = max(2, s // 8)
    sp = s + 2 * pad
    half_bins = sp * (sp // 2 + 1)
    keys = _slice_keys(seed, idx, offsets)
    white = rng.centered_halves(keys.reshape(-1), (g * g + 2 * half_bins + 1) // 2, dt)
    white = white.reshape(n, d, -1)
    # coarse texture nodes every 2 s / g slices, from the first g^2 numbers of the draw of
    # the slice with the node's number; node 0 is the 2-D field
    t = offsets.to(torch.float64) * (g / (2 * s))
    node = torch.floor(t)
    turn = (t - node) * (math.pi / 2)
    lo = (node.long() + d // 2).to(dev)
    coarse = (
        white[:, lo, : g * g] * torch.cos(turn).to(dev, dt)[None, :, None]
        + white[:, (lo + 1).clamp(max=d - 1), : g * g] * torch.sin(turn).to(dev, dt)[None, :, None]
    )
    rows = {name: v.repeat_interleave(d, 0) for name, v in factors.items()}
    shape_rows = shape_u.repeat_interleave(d, 0)
    body_rows = body_k.repeat_interleave(d, 0)
    pixel_rows = pixel_mm.repeat_interleave(d, 0)
    z_rows = z.reshape(-1)
    behind, vessel_alpha = background(
        rows, shape_rows, coarse.reshape(n * d, -1), pixel_rows, s, with_masks, body_rows, dz=z_rows
    )
    wall_alpha = draw_context(
        rows,
        shape_rows,
        behind,
        dx.repeat_interleave(d, 0),
        dy.repeat_interleave(d, 0),
        body_rows,
        pixel_rows,
    )

    # --- nodule: fill fraction of dense tissue, solid core, calcification (as in 2-D)
    dense, fill = nodule_density(factors, 3)
    hu = behind.reshape(n, d, s, s)
    hu += (alpha_nodule * fill) * (dense - hu)
    mean_r = body_k.mean(1)
    ps = torch.nonzero(factors["texture"] == 1).flatten()
    if ps.numel():
        core_u = shape_slice(shape_u[ps], "solid_core")
        core_radius = (0.3 + 0.3 * core_u[:, 0]) * mean_r[ps]
        core_shift = 0.35 * core_u[:, 1] * mean_r[ps]
        core_angle = 2 * math.pi * core_u[:, 2]
        cx = (core_shift * torch.cos(core_angle))[:, None, None]
        cy = (core_shift * torch.sin(core_angle))[:, None, None]
        core_sdf = core_radius[:, None, None, None] - torch.sqrt(
            ((dx[ps] - cx) ** 2 + (dy[ps] - cy) ** 2)[:, None] + dz[ps] ** 2
        )
        core = ramp(core_sdf, edge_mm[ps]) * alpha_body[ps]
        hu[ps] += core * (SOLID_CORE_HU - hu[ps])
    calc_sdf = None
    calcified = torch.nonzero(factors["calcification"] != 0).flatten()
    if calcified.numel():
        c = calcified
        m = c.numel()
        stack = (m, d * s, s)  # slices stacked along y: the 2-D code's (N, H, W) layout
        calc_sdf = calcification_sdf(
            factors["calcification"][c],
            (r[c] / body_r[c]).reshape(stack),
            body_r[c].reshape(stack),
            dx[c],
            dy[c, None].expand(-1, d, -1, -1).reshape(m, -1, 1),
            mean_r[c],
            shape_slice(shape_u[c], "calcification"),
            dz=dz[c].expand(-1, -1, s, -1).reshape(m, -1, 1),
        ).reshape(m, d, s, s)
        alpha_calc = ramp(calc_sdf, pv[c]) * alpha_body[c]
        hu[c] += alpha_calc * (f32("calcification_hu")[c, None, None, None] - hu[c])

    # --- acquisition: slice profile along z, then the 2-D acquisition of every slice
    hu = _slice_profile(hu, f32("slice_thickness_mm"), pixel_mm)
    if rescan:  # a rescan keeps the texture (anatomy) and redraws the acquisition noise
        count = (g * g + 2 * half_bins + 1) // 2
        white = rng.centered_halves(rng.rescan_key(keys.reshape(-1), rescan), count, dt)
        white = white.reshape(n, d, -1)
    acquire(
        rows,
        hu.reshape(n * d, s, s),
        white[:, :, g * g : g * g + 2 * half_bins].reshape(n * d, -1),
        pixel_rows,
        pad,
        out.reshape(n * d, s, s),
    )

    masks = None
    if with_masks:
        body = r < body_r
        spicules = spic_inside.reshape(n, d, s, s) & ~body
        calc = torch.zeros_like(body)
        if calc_sdf is not None:
            calc[calcified] = body[calcified] & (calc_sdf > 0)
        vessels = (
            vessel_alpha.reshape(n, d, s, s) > 0.25
            if vessel_alpha is not None
            else torch.zeros_like(body)
        )
        masks = {
            "nodule": body | spicules,
            "body": body,
            "spicules": spicules,
            "calcification": calc,
            "vessels": vessels,
            "pleura": wall_alpha.reshape(n, d, s, s) > 0.5,
        }
    return masks
