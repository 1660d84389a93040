"""The factor table: every generative factor of a synthetic nodule, in physical units.

Ranges follow LIDC-IDRI and published Hounsfield-unit values (see the docs' factor table
for sources and the LIDC 1-5 correspondences). Every factor is either ``continuous``
(a float in ``[low, high]``) or ``categorical`` (an ``int64`` code into ``categories``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from .._validation import did_you_mean

__all__ = [
    "CALCIFICATION_HU",
    "FACTORS",
    "LUNG_WINDOW_HU",
    "REFERENCE_PATCH_PIXELS",
    "SOLID_CORE_HU",
    "VESSEL_COUNTS",
    "Factor",
    "factor_names",
    "get_factor",
]

#: Display window ``(low, high)`` in HU mapped to ``[0, 1]`` (a common lung window).
LUNG_WINDOW_HU: tuple[float, float] = (-1000.0, 400.0)
#: Attenuation of calcified regions (dense calcium is several hundred HU; > +150 is benign).
CALCIFICATION_HU: float = 500.0
#: Attenuation of the solid core of a part-solid nodule (soft tissue).
SOLID_CORE_HU: float = 40.0
#: Number of vessels drawn for each category of the ``vessels`` factor.
VESSEL_COUNTS: tuple[int, ...] = (0, 2, 5)
#: A patch spans this many acquisition pixels whatever the output ``image_size``, so its
#: field of view is ``REFERENCE_PATCH_PIXELS * pixel_spacing_mm`` millimetres.
REFERENCE_PATCH_PIXELS: int = 64


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


def _continuous(name: str, unit: str, low: float, high: float, description: str,
                lidc: str = "", malignant_above: bool = True) -> Factor:
    return Factor(name, "continuous", unit, low, high, (), description, lidc, malignant_above)


def _categorical(name: str, categories: tuple[str, ...], description: str, lidc: str,
                 malignant: tuple[str, ...]) -> Factor:
    return Factor(name, "categorical", "", 0.0, float(len(categories) - 1), categories,
                  description, lidc, True, malignant)


_TABLE = (
    _continuous("diameter_mm", "mm", 3.0, 30.0,
                "Longest axis of the nodule body (the ellipse's major axis).",
                "LIDC outlines nodules of 3-30 mm"),
    _continuous("sphericity", "", 0.4, 1.0,
                "Minor / major axis ratio of the body ellipse (1 is round).",
                "sphericity 1 (linear) .. 5 (round)", malignant_above=False),
    _continuous("orientation_deg", "deg", 0.0, 180.0,
                "Angle of the major axis, counter-clockwise from the image x axis."),
    _continuous("lobulation", "", 0.0, 1.0,
                "Amplitude of radial harmonics of order 2-5 (up to 35 % of the radius).",
                "lobulation 1 (none) .. 5 (marked)"),
    _continuous("spiculation", "", 0.0, 1.0,
                "Number and length of tapered spicules radiating from the margin.",
                "spiculation 1 (none) .. 5 (marked)"),
    _continuous("margin_sharpness", "", 0.0, 1.0,
                "Sharpness of the nodule edge: the edge ramp is 0.1 + 2.9 (1 - m) mm wide.",
                "margin 1 (poorly defined) .. 5 (sharp)", malignant_above=False),
    _categorical("texture", ("solid", "part-solid", "ground-glass"),
                 "Internal density pattern; part-solid adds a solid core.",
                 "texture 5 (solid), 3 (part-solid), 1 (non-solid / ground glass)",
                 ("solid", "part-solid")),
    _continuous("attenuation_hu", "HU", -800.0, 150.0,
                "Attenuation of the nodule body (the ground-glass part if part-solid)."),
    _categorical("calcification", ("absent", "central", "laminated", "popcorn", "diffuse"),
                 "Benign calcification pattern drawn at the calcification HU.",
                 "calcification 6 (absent), 5 (central), 2 (laminated), 1 (popcorn), "
                 "3 (solid)", ("absent",)),
    _continuous("offset_x_mm", "mm", -10.0, 10.0, "Nodule centre offset along x."),
    _continuous("offset_y_mm", "mm", -10.0, 10.0, "Nodule centre offset along y."),
    _continuous("background_hu", "HU", -950.0, -700.0,
                "Mean attenuation of the surrounding lung parenchyma."),
    _continuous("background_texture_hu", "HU", 0.0, 80.0,
                "Standard deviation of the smooth parenchymal texture."),
    _categorical("vessels", ("none", "few", "many"),
                 "Number of vessel segments in the patch (0, 2 or 5).", "", ("many",)),
    _continuous("noise_hu", "HU", 0.0, 150.0,
                "Standard deviation of the acquisition noise (CT quantum noise)."),
    _continuous("blur_mm", "mm", 0.0, 2.0,
                "Standard deviation of the Gaussian point-spread function."),
    _continuous("pixel_spacing_mm", "mm", 0.46, 0.98,
                "In-plane acquisition spacing; the patch spans 64 such pixels.",
                "LIDC in-plane spacing is about 0.46-0.98 mm"),
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
