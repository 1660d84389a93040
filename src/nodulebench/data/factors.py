"""The factor table: every generative factor of a synthetic nodule, in physical units.

Ranges follow LIDC-IDRI and published Hounsfield-unit values (see the docs' factor table
for sources and the LIDC 1-5 correspondences). Every factor is either ``continuous``
(a float in ``[low, high]``) or ``categorical`` (an ``int64`` code into ``categories``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from .._validation import did_you_mean

__all__ = [
    "CHEST_WALL_HU",
    "FACTORS",
    "FISSURE_HU",
    "KERNELS",
    "LUNG_WINDOW_HU",
    "REFERENCE_PATCH_PIXELS",
    "SITES",
    "SOLID_CORE_HU",
    "VESSEL_COUNTS",
    "Factor",
    "Kernel",
    "Site",
    "factor_names",
    "get_factor",
]

#: Display window ``(low, high)`` in HU mapped to ``[0, 1]`` (a common lung window).
LUNG_WINDOW_HU: tuple[float, float] = (-1000.0, 400.0)
#: Attenuation of the solid core of a part-solid nodule (soft tissue).
SOLID_CORE_HU: float = 40.0
#: Attenuation of the chest wall beyond the pleura (muscle) and of a fissure's tissue.
CHEST_WALL_HU: float = 40.0
#: Attenuation of the thin fissure (partial volume makes it read far lower).
FISSURE_HU: float = 0.0
#: Number of vessels drawn for each category of the ``vessels`` factor.
VESSEL_COUNTS: tuple[int, ...] = (0, 2, 5)
#: A patch spans this many acquisition pixels whatever the output ``image_size``, so its
#: field of view is ``REFERENCE_PATCH_PIXELS * pixel_spacing_mm`` millimetres.
REFERENCE_PATCH_PIXELS: int = 64


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: its noise texture and its resolution, in millimetres.

    Attributes:
        nps_peak_per_mm: where the noise power spectrum ``f exp(-(f / f0)^2)`` peaks,
            ``f0 / sqrt(2)``, in cycles per mm (smooth kernels give coarse, blotchy noise;
            sharp lung kernels a fine grain). The same in mm at every pixel size.
        psf_mm: standard deviation in mm of the kernel's own Gaussian point-spread function,
            added in quadrature to ``blur_mm``; ``0.1874 / psf_mm`` is the kernel's MTF50 in
            cycles per mm.
    """

    nps_peak_per_mm: float
    psf_mm: float

    def __post_init__(self) -> None:
        # CT noise power peaks between about 0.05 and 1.5 cycles/mm (Nyquist of a 0.33 mm
        # pixel) and kernels blur by a few tenths of a millimetre to about 2 mm
        for name, low, high in (("nps_peak_per_mm", 0.05, 1.5), ("psf_mm", 0.05, 2.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number; got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(
                    f"{name} must lie in [{low}, {high}] (a physical CT kernel); got {value!r}"
                )

    @property
    def mtf50_per_mm(self) -> float:
        """Frequency (cycles per mm) where the kernel's Gaussian MTF falls to one half."""
        return math.sqrt(math.log(2.0) / 2.0) / (math.pi * self.psf_mm)


#: Reconstruction kernels by name (the ``kernel`` factor's categories, in order). NPS peaks
#: and MTF50 (0.35, 0.45 and 0.75 cycles/mm) lie within what phantom measurements of
#: clinical filtered-back-projection kernels report (soft tissue to lung; Solomon et al.,
#: Med. Phys. 39:4119, 2012; Friedman et al., Med. Phys. 40:051907, 2013).
KERNELS: MappingProxyType[str, Kernel] = MappingProxyType(
    {
        "smooth": Kernel(0.20, 0.54),
        "standard": Kernel(0.30, 0.42),
        "sharp": Kernel(0.60, 0.25),
    }
)


@dataclass(frozen=True)
class Site:
    """A scanner: the acquisition settings it bundles (the default ``site`` marginals).

    Attributes:
        kernel: its reconstruction kernel (a :data:`KERNELS` name).
        noise_hu: ``(low, high)`` noise standard deviation (its dose range).
        pixel_spacing_mm: ``(low, high)`` in-plane spacing of its protocol.
        hu_offset: ``(low, high)`` calibration offset of its CT numbers, HU.
    """

    kernel: str
    noise_hu: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]
    hu_offset: tuple[float, float] = (-1.0, 1.0)


#: The named scanners of the ``site`` factor. A: smooth kernel at routine dose; B: standard
#: kernel, routine dose; C: standard kernel at screening (low) dose; D: sharp lung kernel
#: at screening dose, whose noise (50-110 HU) is that of
#: lung-kernel reconstructions at low dose. Calibration offsets stay within the +-7 HU
#: that the ACR CT accreditation program allows for water.
SITES: MappingProxyType[str, Site] = MappingProxyType(
    {
        "scanner_a": Site("smooth", (8.0, 18.0), (0.70, 0.80), (-4.0, -2.0)),
        "scanner_b": Site("standard", (12.0, 24.0), (0.62, 0.72), (-1.0, 1.0)),
        "scanner_c": Site("standard", (28.0, 45.0), (0.74, 0.86), (1.0, 3.0)),
        "scanner_d": Site("sharp", (50.0, 110.0), (0.56, 0.66), (2.0, 5.0)),
    }
)


@dataclass(frozen=True)
class Factor:
    """One generative factor.

    Attributes:
        name: public name, e.g. ``"diameter_mm"``.
        kind: ``"continuous"`` or ``"categorical"``.
        unit: physical unit (``"mm"``, ``"HU"``, ``"deg"``) or ``""`` for a unitless score.
        low: smallest allowed value (continuous factors; ``0`` for categorical ones).
        high: largest allowed value (continuous; ``len(categories) - 1`` for categorical).
        categories: category names (categorical factors; empty for continuous ones).
        description: what the factor does to the image.
        lidc: the LIDC-IDRI rating it corresponds to, or ``""`` when none does.
        malignant_above: default direction of a shortcut split on a continuous factor:
            ``True`` when larger values look malignant.
        malignant_categories: default "malignant-looking" categories of a categorical
            factor (the other categories look benign).
    """

    name: str
    kind: Literal["continuous", "categorical"]
    unit: str
    low: float
    high: float
    categories: tuple[str, ...] = ()
    description: str = ""
    lidc: str = ""
    malignant_above: bool = True
    malignant_categories: tuple[str, ...] = ()

    @property
    def is_categorical(self) -> bool:
        """Whether values are integer codes into :attr:`categories`."""
        return self.kind == "categorical"


def _continuous(
    name: str,
    unit: str,
    low: float,
    high: float,
    description: str,
    lidc: str = "",
    malignant_above: bool = True,
) -> Factor:
    return Factor(name, "continuous", unit, low, high, (), description, lidc, malignant_above)


def _categorical(
    name: str, categories: tuple[str, ...], description: str, lidc: str, malignant: tuple[str, ...]
) -> Factor:
    return Factor(
        name,
        "categorical",
        "",
        0.0,
        float(len(categories) - 1),
        categories,
        description,
        lidc,
        True,
        malignant,
    )


_TABLE = (
    _continuous(
        "diameter_mm",
        "mm",
        3.0,
        30.0,
        "Longest axis of the nodule body (the ellipse's major axis).",
        "LIDC outlines nodules of 3-30 mm",
    ),
    _continuous(
        "sphericity",
        "",
        0.4,
        1.0,
        "Minor / major axis ratio of the body ellipse (1 is round).",
        "sphericity 1 (linear) .. 5 (round)",
        malignant_above=False,
    ),
    _continuous(
        "orientation_deg",
        "deg",
        0.0,
        180.0,
        "Angle of the major axis, counter-clockwise from the image x axis.",
    ),
    _continuous(
        "lobulation",
        "",
        0.0,
        1.0,
        "Amplitude of radial harmonics of order 2-5 (up to 35 % of the radius).",
        "lobulation 1 (none) .. 5 (marked)",
    ),
    _continuous(
        "spiculation",
        "",
        0.0,
        1.0,
        "Number (0 below 0.25, then one more per 0.07, up to 10), length "
        "((2 + 8 s) mm times 0.6-1.4) of thin tapered curved spicules.",
        "spiculation 1 (none) .. 5 (marked)",
    ),
    _continuous(
        "margin_sharpness",
        "",
        0.0,
        1.0,
        "Sharpness of the nodule edge: the edge ramp is 0.1 + 2.9 (1 - m) mm wide.",
        "margin 1 (poorly defined) .. 5 (sharp)",
        malignant_above=False,
    ),
    _categorical(
        "texture",
        ("solid", "part-solid", "ground-glass"),
        "Internal density pattern; part-solid adds a solid core of varying size "
        "and position; ground glass lets vessels show through.",
        "texture 5 (solid), 3 (part-solid), 1 (non-solid / ground glass)",
        ("solid", "part-solid"),
    ),
    _continuous(
        "attenuation_hu",
        "HU",
        -800.0,
        150.0,
        "Attenuation of the nodule body (the ground-glass part if part-solid).",
    ),
    _categorical(
        "calcification",
        ("absent", "central", "laminated", "popcorn", "diffuse", "eccentric", "stippled"),
        "Calcification pattern drawn at calcification_hu; eccentric and stippled "
        "are the indeterminate patterns.",
        "calcification 6 (absent), 5 (central), 2 (laminated), 1 (popcorn), "
        "3 (solid), 4 (non-central)",
        ("absent", "eccentric", "stippled"),
    ),
    _continuous(
        "calcification_hu",
        "HU",
        150.0,
        1000.0,
        "Attenuation of calcified regions (calcified nodules read > +150 HU).",
    ),
    _continuous("offset_x_mm", "mm", -10.0, 10.0, "Nodule centre offset along x."),
    _continuous("offset_y_mm", "mm", -10.0, 10.0, "Nodule centre offset along y."),
    _continuous(
        "background_hu",
        "HU",
        -950.0,
        -700.0,
        "Mean attenuation of the surrounding lung parenchyma.",
    ),
    _continuous(
        "background_texture_hu",
        "HU",
        0.0,
        80.0,
        "Standard deviation of the smooth parenchymal texture.",
    ),
    _categorical(
        "vessels",
        ("none", "few", "many"),
        "Number of vessel segments in the patch (0, 2 or 5).",
        "",
        ("many",),
    ),
    _categorical(
        "location",
        ("isolated", "juxta-vascular", "juxta-pleural"),
        "Context: alone in the parenchyma, touching a vessel, or touching the "
        "pleura with the chest wall beyond.",
        "",
        ("juxta-pleural",),
    ),
    _categorical(
        "fissure",
        ("absent", "present"),
        "A thin interlobar fissure crossing the patch.",
        "",
        ("present",),
    ),
    _categorical(
        "site",
        tuple(SITES),
        "Scanner; by default it sets the kernel, noise (dose) and spacing ranges.",
        "",
        ("scanner_c", "scanner_d"),
    ),
    _categorical(
        "kernel",
        tuple(KERNELS),
        "Reconstruction kernel: noise texture (power spectrum) and resolution.",
        "",
        ("sharp",),
    ),
    _continuous(
        "noise_hu",
        "HU",
        0.0,
        150.0,
        "Standard deviation of the acquisition noise (falls as 1/sqrt(dose)).",
    ),
    _continuous(
        "blur_mm",
        "mm",
        0.0,
        2.0,
        "Standard deviation of the Gaussian point-spread function (the kernel's "
        "own PSF adds in quadrature).",
    ),
    _continuous(
        "pixel_spacing_mm",
        "mm",
        0.46,
        0.98,
        "In-plane acquisition spacing; the patch spans 64 such pixels.",
        "LIDC in-plane spacing is about 0.46-0.98 mm",
    ),
    _continuous(
        "slice_thickness_mm",
        "mm",
        0.5,
        5.0,
        "Full width at half maximum of the slice sensitivity profile along z "
        "(volumes only: a 2-D image is a thin section).",
        "LIDC slice thickness is about 0.6-5 mm",
    ),
    _continuous(
        "hu_offset",
        "HU",
        -10.0,
        10.0,
        "Calibration offset added to every CT number of the scan (a scanner property; "
        "within +-7 HU for water under ACR accreditation).",
    ),
)

#: Ordered, read-only mapping ``name -> Factor`` of every factor, in sampling order.
FACTORS: MappingProxyType[str, Factor] = MappingProxyType({f.name: f for f in _TABLE})


def factor_names() -> tuple[str, ...]:
    """Names of all factors, in table order."""
    return tuple(FACTORS)


def get_factor(name: str, *, argument: str = "factor") -> Factor:
    """Look a factor up by name; ``ValueError`` naming ``argument`` when unknown."""
    if not isinstance(name, str) or name not in FACTORS:
        raise ValueError(
            f"{argument} must be one of {', '.join(FACTORS)}; got {name!r}"
            f"{did_you_mean(name, FACTORS)}"
        )
    return FACTORS[name]
