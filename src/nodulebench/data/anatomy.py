"""The anatomy around a nodule, in millimetres: parenchyma, vessels, pleura, fissure.

Sampled on the output grid by the renderer (:mod:`~nodulebench.data.render`); the nodule
itself is described in :mod:`~nodulebench.data.geometry`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch

from .factors import CHEST_WALL_HU, FISSURE_HU, VESSEL_COUNTS
from .geometry import ANGLES, shape_slice

__all__ = ["TEXTURE_GRID", "background", "draw_context", "ramp"]

_MAX_VESSELS = max(VESSEL_COUNTS)
#: Coarse grid of the parenchymal texture across the patch.
TEXTURE_GRID = 16


def ramp(signed_mm: torch.Tensor, width_mm: torch.Tensor) -> torch.Tensor:
    """Soft inside-indicator: 1 inside (``signed_mm > width/2``), 0.5 on the edge, linear."""
    return (signed_mm / width_mm).add_(0.5).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=32)
def upsample_matrix(size: int, grid: int, periodic: bool, device: str) -> torch.Tensor:
    """``(size, grid)`` weights resampling ``grid`` cell centres onto ``size`` cell centres.

    Periodic grids use the cubic B-spline (smooth, no grid pattern: the texture);
    non-periodic ones use linear interpolation clamped at the border (the background layer).
    """
    t = (torch.arange(size, dtype=torch.float64) + 0.5) * (grid / size) - 0.5
    node = torch.arange(grid, dtype=torch.float64)
    if periodic:
        d = ((t[:, None] - node[None, :] + grid / 2) % grid - grid / 2).abs()
        w = torch.where(
            d < 1,
            2 / 3 - d**2 + d**3 / 2,
            torch.where(d < 2, (2 - d) ** 3 / 6, torch.zeros_like(d)),
        )
    else:
        t = t.clamp(0, grid - 1)
        w = (1 - (t[:, None] - node[None, :]).abs()).clamp(min=0)
    return w.float().to(device)


# std of a unit white field upsampled with the cubic B-spline: 0.5 at the nodes, 0.46
# midway (product of the 1-D sums of squared weights), 0.48 on average
_BSPLINE_STD = 0.48


def draw_context(
    factors: Mapping[str, torch.Tensor],
    shape_u: torch.Tensor,
    hu: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    body_k: torch.Tensor,
    pixel_mm: torch.Tensor,
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
        d = (
            x * torch.cos(angle)[:, None, None]
            + y * torch.sin(angle)[:, None, None]
            - offset[:, None, None]
        )
        half, pf = 0.2, p[fis]
        cover = torch.minimum(d + half, 0.5 * pf) - torch.maximum(d - half, -0.5 * pf)
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
        sd = (
            torch.sqrt(
                (dx[pleural] - cx[:, None, None]) ** 2 + (dy[pleural] - cy[:, None, None]) ** 2
            )
            - radius
        )
        alpha = ramp(sd, p[pleural])
        hu[pleural] += alpha * (CHEST_WALL_HU - hu[pleural])
        wall[pleural] = alpha
    return wall


def background(
    factors: Mapping[str, torch.Tensor],
    shape_u: torch.Tensor,
    coarse_white: torch.Tensor,
    pixel_mm: torch.Tensor,
    s: int,
    with_mask: bool,
    body_k: torch.Tensor,
    dz: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parenchyma, texture and vessels in HU, ``(N, S, S)``, and the vessel mask if asked.

    Drawn on a half-resolution grid (vessels are 1-3 mm wide, the texture is smoother) and
    resampled linearly: a quarter of the per-pixel work. Vessels taper along their length;
    every odd-numbered vessel is a branch leaving the previous one at 20-50 degrees. As many
    vessels cross the slice as run in it: round dots in an image, slightly tilted tubes
    along z in a volume (see :func:`_through_plane_vessels`). A
    juxta-vascular nodule (``body_k``: its body radius on the angular grid) has a first
    vessel, present whatever ``vessels`` says, whose wall touches the body where the vessel
    is densest. ``dz``: ``(N,)`` height of each row's slice above the axial plane of the
    vessel axes, for a volume sampled slice by slice; vessels are then round tubes.
    """
    dev = shape_u.device
    dt = shape_u.dtype
    n = shape_u.shape[0]
    low = max(16, s // 2)
    g = TEXTURE_GRID
    coarse = coarse_white.reshape(n, g, g) * math.sqrt(12.0)
    up = upsample_matrix(low, g, True, str(dev))
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
        v_angle[:, parent]
    )
    py = v_offset[:, parent] * torch.sin(v_angle[:, parent]) + v_middle[:, parent] * torch.cos(
        v_angle[:, parent]
    )
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
        across = x * v_cos[:, j, None, None] + (
            y * v_sin[:, j, None, None] - v_offset[:, j, None, None]
        )
        along = (y * v_cos[:, j, None, None] - v_middle[:, j, None, None]) - (
            x * v_sin[:, j, None, None]
        )
        pos = along / v_half_length[:, j, None, None]
        if branch[j]:
            pos = pos.clamp(min=0) - (along * inv_edge).clamp(max=0)  # one-sided, soft start
        # tapering: the radius falls by 40 % from the densest point to either end
        radius = v_radius[:, j, None, None] * (1 - 0.4 * pos.abs().clamp(max=1))
        dist = across.abs_() if dz is None else torch.hypot(across, dz[:, None, None])
        alpha = dist.sub_(radius).mul_(-inv_edge)
        alpha = alpha.add_(0.5).clamp_(0, 1)
        alpha *= (1 - pos**2).clamp_(min=0.0) * present
        field += alpha * (v_peak[:, j, None, None] - field)
        if mask is not None:
            torch.maximum(mask, alpha, out=mask)
    _through_plane_vessels(factors, shape_u, field, mask, x, y, body_k, fov, inv_edge, dz)
    if low == s:
        return field, mask
    resample = upsample_matrix(s, low, False, str(dev))
    return (resample @ field @ resample.T, None if mask is None else resample @ mask @ resample.T)


def _through_plane_vessels(
    factors: Mapping[str, torch.Tensor],
    shape_u: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    body_k: torch.Tensor,
    fov: torch.Tensor,
    inv_edge: torch.Tensor,
    dz: torch.Tensor | None,
) -> None:
    """Draw vessels that cross the slice into ``field`` (and ``mask``) in place.

    As many as the in-plane vessels (``vessels``: 0, 2 or 5), each a round tube of radius
    0.4 - 1.2 mm running along z with a tilt of up to 0.3 mm per mm, its contrast that of a
    small vessel seen end-on (-400 ... -50 HU in partial volume). An image cuts it to a dot,
    a volume follows it from slice to slice. Each crosses the slice at least 2.5 mm outside
    the nodule's largest radius, so an isolated nodule stays isolated.
    """
    dev, dt = field.device, field.dtype
    n = field.shape[0]
    counts = torch.tensor(VESSEL_COUNTS, device=dev)[factors["vessels"]]
    if not bool((counts > 0).any()):
        return
    du = shape_slice(shape_u, "vessel_dots").reshape(n, 5, -1)
    clear = body_k.amax(1)[:, None] + 2.5  # mm from the nodule centre
    reach = (0.45 * fov[:, None] - clear).clamp(min=0.5)
    distance = clear + reach * du[:, 0]
    angle = 2 * math.pi * du[:, 1]
    cx = factors["offset_x_mm"].to(dt)[:, None] + distance * torch.cos(angle)
    cy = factors["offset_y_mm"].to(dt)[:, None] + distance * torch.sin(angle)
    radius = 0.4 + 0.8 * du[:, 2]
    peak = -400.0 + 350.0 * du[:, 3]
    tilt = 0.3 * (2 * du[:, 4] - 1)  # mm across per mm along z, direction set by angle
    for j in range(_MAX_VESSELS):
        if not bool((counts > j).any()):
            break
        present = (counts > j).to(dt)[:, None, None]
        px, py = cx[:, j, None, None], cy[:, j, None, None]
        if dz is not None:  # the tube leans as it climbs
            shift = (tilt[:, j] * dz)[:, None, None]
            px = px + shift * torch.cos(angle[:, j, None, None] + 1.0)
            py = py + shift * torch.sin(angle[:, j, None, None] + 1.0)
        dist = torch.sqrt((x - px) ** 2 + (y - py) ** 2)
        # a dot thinner than the grid would fall between its nodes: draw it at least 0.75
        # grid steps wide and scale its contrast by the area ratio (partial volume keeps its
        # area whatever the grid)
        r = radius[:, j, None, None]
        wide = torch.maximum(r, 0.75 / inv_edge)
        cover = (wide - dist).mul_(inv_edge).add_(0.5).clamp_(0, 1) * present
        field += (cover * (r / wide) ** 2) * (peak[:, j, None, None] - field)
        if mask is not None:
            torch.maximum(mask, cover, out=mask)  # the pixels the tube passes through
