"""Synthetic lung nodules with known, controllable factors (the data pillar)."""

from __future__ import annotations

from .cache import CacheError
from .dataset import CLASSES, SyntheticNodules
from .distributions import ByCategory, Categorical, Fixed, LogUniform, Split, Uniform
from .factors import FACTORS, LUNG_WINDOW_HU, Factor
from .labels import BrockLabelRule
from .measure import Measurements, measure, noise_texture
from .measure3d import VolumeMeasurements, measure_volume
from .spec import (
    DEFAULT_MARGINALS,
    TEST_DISTRIBUTIONS,
    LabelFunction,
    LinearLabelRule,
    LogisticLabelRule,
    NoduleSpec,
    Shortcut,
)
from .visibility import spicule_cnr

__all__ = [
    "CLASSES",
    "DEFAULT_MARGINALS",
    "FACTORS",
    "LUNG_WINDOW_HU",
    "TEST_DISTRIBUTIONS",
    "BrockLabelRule",
    "ByCategory",
    "CacheError",
    "Categorical",
    "Factor",
    "Fixed",
    "LabelFunction",
    "LinearLabelRule",
    "LogUniform",
    "LogisticLabelRule",
    "Measurements",
    "NoduleSpec",
    "Shortcut",
    "Split",
    "SyntheticNodules",
    "Uniform",
    "VolumeMeasurements",
    "measure",
    "measure_volume",
    "noise_texture",
    "spicule_cnr",
]
