"""Option checks of every loss, shared by the functionals and the modules.

The modules call them in ``__init__`` so that a bad option fails at construction, not at
the first batch; the functionals call them on every call.
"""

from __future__ import annotations

import torch

from nodulebench._validation import (
    check_choice,
    check_floating,
    check_in_range,
    check_ndim,
    check_positive,
)
from nodulebench.kernels.dispatch import BACKEND_CHOICES
from nodulebench.losses._inputs import check_reduction
from nodulebench.losses.distances import DISTANCES

__all__ = [
    "SUPCON_VARIANTS",
    "check_backend",
    "TRIPLET_MININGS",
    "check_contrastive_options",
    "check_cross_entropy_options",
    "check_multi_similarity_options",
    "check_supcon_options",
    "check_triplet_options",
]

SUPCON_VARIANTS: tuple[str, ...] = ("out", "in")
TRIPLET_MININGS: tuple[str, ...] = ("all", "hard", "semihard")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is a backend choice, else raise ``ValueError``."""
    check_choice("backend", backend, BACKEND_CHOICES)
    return backend


def check_supcon_options(
    temperature: float, variant: str, base_temperature: float | None, reduction: str
) -> None:
    """Raise on an invalid SupCon / NT-Xent option (see ``supcon_loss``)."""
    check_positive("temperature", temperature)
    check_choice("variant", variant, SUPCON_VARIANTS)
    if base_temperature is not None:
        check_positive("base_temperature", base_temperature)
    check_reduction(reduction)


def check_contrastive_options(margin: float, reduction: str) -> None:
    """Raise on an invalid contrastive-loss option (see ``contrastive_loss``)."""
    check_positive("margin", margin, allow_zero=True)
    check_reduction(reduction)


def check_triplet_options(margin: float, distance: str, mining: str, reduction: str) -> None:
    """Raise on an invalid triplet-loss option (see ``triplet_margin_loss``)."""
    check_positive("margin", margin, allow_zero=True)
    check_choice("distance", distance, DISTANCES)
    check_choice("mining", mining, TRIPLET_MININGS)
    check_reduction(reduction)


def check_multi_similarity_options(
    alpha: float, beta: float, base: float, epsilon: float, reduction: str
) -> None:
    """Raise on an invalid multi-similarity option (see ``multi_similarity_loss``)."""
    check_positive("alpha", alpha)
    check_positive("beta", beta)
    check_in_range("base", base, -1.0, 1.0)
    check_positive("epsilon", epsilon, allow_zero=True)
    check_reduction(reduction)


def check_cross_entropy_options(
    label_smoothing: float, weight: torch.Tensor | None, reduction: str
) -> None:
    """Raise on an invalid cross-entropy option (see ``cross_entropy_loss``)."""
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    if weight is not None:
        check_ndim("weight", weight, (1,), "(C,)")
        check_floating("weight", weight)
    check_reduction(reduction)
