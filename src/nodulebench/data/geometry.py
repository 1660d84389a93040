"""The nodule as parametric objects in millimetres, independent of any pixel grid.

A nodule is a body outline ``r(theta)`` on a 1-D angular grid (ellipse, lobulation
harmonics, rotation) and a set of spicules, each a tapered, slightly curved strand
described by its angle, base radius, length, width, bend and width ripple, all in mm.
Samplers (the 2-D renderer today) turn this description into pixels; the description
never depends on the output size, so every size shows the same object.

Spicules follow documented formulas of ``spiculation`` ``s`` and per-spicule exogenous
uniforms ``u``:

- spicule ``j`` (``j = 0 .. 9``) exists when ``s > 0.25 + 0.07 j``; its length grows from 0
  to its full length as ``s`` passes that threshold by 0.1 (no jump in the image);
- full length ``(2 + 8 s)(0.6 + 0.8 u)`` mm; base width ``0.5 + u`` mm, tapering linearly to
  15 % of it at the tip, with a +-20 % ripple along the strand;
- the axis bends sideways by up to 20 % of the length at the tip (a parabola).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .factors import VESSEL_COUNTS

__all__ = [
    "ANGLES",
    "MAX_SPICULES",
    "SHAPE_SLOTS",
    "Spicules",
    "body_radius",
    "shape_slice",
    "spicule_count",
    "spicules",
]

ANGLES = 256  # angular grid of r(theta), a power of two (wrap by bit mask)
HARMONICS = (2, 3, 4, 5)  # lobulation orders
MAX_SPICULES = 10
SPICULE_ONSET = 0.25  # spiculation at which the first spicule starts to grow
SPICULE_STEP = 0.07  # spiculation between the onsets of successive spicules
SPICULE_GROWTH = 0.1  # spiculation over which a spicule grows to its full length
CALCIFICATION_BLOBS = 12
MAX_VESSELS = max(VESSEL_COUNTS)
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))

#: Exogenous shape numbers per sample: name -> how many (one uniform each).
SHAPE_SLOTS: tuple[tuple[str, int], ...] = (
    ("harmonic_amplitude", len(HARMONICS)),
    ("harmonic_phase", len(HARMONICS)),
    ("spicule_first_angle", 1),
    ("spicule_jitter", MAX_SPICULES),
    ("spicule_length", MAX_SPICULES),
    ("spicule_width", MAX_SPICULES),
    ("spicule_bend", MAX_SPICULES),
    ("spicule_ripple", MAX_SPICULES),
    ("calcification", 3 * CALCIFICATION_BLOBS),
    ("solid_core", 3),
    ("vessels", 6 * MAX_VESSELS),
    ("pleura", 2),
    ("fissure", 2),
    ("vessel_dots", 5 * MAX_VESSELS),  # appended last: every earlier number is unchanged
)
_OFFSETS: dict[str, tuple[int, int]] = {}
_start = 0
for _name, _count in SHAPE_SLOTS:
    _OFFSETS[_name] = (_start, _start + _count)
    _start += _count
#: Total number of exogenous shape numbers per sample.
SHAPE_NUMBERS = _start


def shape_slice(shape_u: torch.Tensor, name: str) -> torch.Tensor:
    """The ``(N, count)`` columns of the shape numbers reserved for ``name``."""
    lo, hi = _OFFSETS[name]
    return shape_u[:, lo:hi]


def body_radius(factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor) -> torch.Tensor:
    """Body radius on the angular grid, ``(N, ANGLES)`` in mm (ellipse times harmonics)."""
    dev, dt = shape_u.device, shape_u.dtype
    theta = torch.arange(ANGLES, device=dev, dtype=dt) * (2 * math.pi / ANGLES)
    a = factors["diameter_mm"].to(dt)[:, None] / 2
    b = a * factors["sphericity"].to(dt)[:, None]
    phi = theta[None, :] - torch.deg2rad(factors["orientation_deg"].to(dt))[:, None]
    ellipse = a * b / torch.sqrt((b * torch.cos(phi)) ** 2 + (a * torch.sin(phi)) ** 2)
    amp = 0.5 + 0.5 * shape_slice(shape_u, "harmonic_amplitude")
    phase = 2 * math.pi * shape_slice(shape_u, "harmonic_phase")
    orders = torch.tensor(HARMONICS, device=dev, dtype=dt)
    wave = torch.cos(orders[None, :, None] * theta[None, None, :] + phase[:, :, None])
    wave = (amp[:, :, None] * wave).sum(1) / amp.sum(1, keepdim=True)
    return ellipse * (1 + 0.35 * factors["lobulation"].to(dt)[:, None] * wave)


def spicule_count(spiculation: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 number of spicules present (of nonzero length) at ``spiculation``."""
    onsets = SPICULE_ONSET + SPICULE_STEP * torch.arange(MAX_SPICULES, dtype=torch.float64)
    return (spiculation.double().cpu()[:, None] > onsets[None, :]).sum(1).to(spiculation.device)


@dataclass(frozen=True)
class Spicules:
    """Every spicule of a batch, ``(N, MAX_SPICULES)`` tensors in mm and radians.

    Attributes:
        angle: direction of the axis at the base.
        base_mm: distance of the base from the nodule centre (just inside the body).
        length_mm: length along the axis; ``0`` for an absent spicule.
        width_mm: full width at the base.
        bend_mm: sideways offset of the tip (the axis is a parabola).
        ripple: phase of the width ripple along the strand.
        nearest: ``(N, ANGLES)`` int64, the spicule whose axis angle is nearest to each
            angular bin (spicules are far apart in angle, so a pixel meets at most this one).
    """

    angle: torch.Tensor
    base_mm: torch.Tensor
    length_mm: torch.Tensor
    width_mm: torch.Tensor
    bend_mm: torch.Tensor
    ripple: torch.Tensor
    nearest: torch.Tensor

    def select(self, rows: torch.Tensor) -> Spicules:
        """The spicules of some samples of the batch."""
        return Spicules(
            *(
                getattr(self, f)[rows]
                for f in (
                    "angle",
                    "base_mm",
                    "length_mm",
                    "width_mm",
                    "bend_mm",
                    "ripple",
                    "nearest",
                )
            )
        )

    def table(self) -> torch.Tensor:
        """``(N, ANGLES, 7)`` parameters of the nearest spicule per angular bin.

        Columns: cosine and sine of the angle, base, length, width, bend, ripple.
        """
        params = torch.stack(
            (
                torch.cos(self.angle),
                torch.sin(self.angle),
                self.base_mm,
                self.length_mm,
                self.width_mm,
                self.bend_mm,
                self.ripple,
            ),
            dim=-1,
        )  # (N, J, 7)
        return torch.gather(params, 1, self.nearest[:, :, None].expand(-1, -1, 7))


def spicules(
    factors: Mapping[str, torch.Tensor], shape_u: torch.Tensor, body_r: torch.Tensor
) -> Spicules:
    """The spicules of a batch (see the module docstring for the formulas)."""
    dev, dt = shape_u.device, shape_u.dtype
    s = factors["spiculation"].to(dt)[:, None]
    j = torch.arange(MAX_SPICULES, device=dev, dtype=dt)
    onset = SPICULE_ONSET + SPICULE_STEP * j
    grown = ((s - onset[None, :]) / SPICULE_GROWTH).clamp(0.0, 1.0)
    first = 2 * math.pi * shape_slice(shape_u, "spicule_first_angle")
    # golden-angle spacing keeps present spicules apart whatever their number
    angle = (
        first + j[None, :] * GOLDEN_ANGLE + 0.15 * (shape_slice(shape_u, "spicule_jitter") - 0.5)
    ) % (2 * math.pi)
    length = (2 + 8 * s) * (0.6 + 0.8 * shape_slice(shape_u, "spicule_length")) * grown
    width = 0.5 + shape_slice(shape_u, "spicule_width")
    bend = 0.4 * (shape_slice(shape_u, "spicule_bend") - 0.5) * length
    ripple = 2 * math.pi * shape_slice(shape_u, "spicule_ripple")
    bins = (angle * (ANGLES / (2 * math.pi))).long().clamp_(0, ANGLES - 1)
    base = torch.gather(body_r, 1, bins)
    base = torch.maximum(base - 1.0, 0.5 * base)  # start inside the body: no gap at the root
    # nearest present spicule of each angular bin (absent ones are pushed out of reach)
    theta = torch.arange(ANGLES, device=dev, dtype=dt) * (2 * math.pi / ANGLES)
    delta = theta[None, :, None] - angle[:, None, :]  # (N, K, J): argmin over the last dim
    delta = (delta - 2 * math.pi * torch.round(delta / (2 * math.pi))).abs()
    delta = delta + 10.0 * (length <= 0).to(dt)[:, None, :]
    nearest = delta.argmin(2)
    return Spicules(angle, base, length, width, bend, ripple, nearest)
