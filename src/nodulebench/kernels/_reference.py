"""The ``"reference"`` backend: the dense definitions of ``nodulebench.losses``, adapted.

The dense per-anchor functions live in ``nodulebench.losses._dense`` and leave arbitrary
values on invalid rows; these adapters give them the kernels' return convention (0 on
invalid rows; ``(total, count, valid)`` for batch-all triplet). The losses package is
imported on first use only, so the kernels never import it at module load.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

__all__ = [
    "DENSE_MODULE",
    "contrastive_reference",
    "multi_similarity_reference",
    "supcon_reference",
    "triplet_all_reference",
    "triplet_hard_reference",
    "triplet_semihard_reference",
]

DENSE_MODULE = "nodulebench.losses._dense"


def _dense() -> ModuleType:
    return importlib.import_module(DENSE_MODULE)


def _zero_invalid(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, loss, torch.zeros_like(loss))


def supcon_reference(
    z: torch.Tensor, labels: torch.Tensor, *, temperature: float, variant: str = "out"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense SupCon per anchor: ``(loss, valid)``."""
    loss, valid = _dense().supcon_per_anchor(z, labels, temperature=temperature, variant=variant)
    return _zero_invalid(loss, valid), valid


def contrastive_reference(
    z: torch.Tensor, labels: torch.Tensor, *, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense contrastive loss per anchor: ``(loss, valid)``."""
    loss, valid = _dense().contrastive_per_anchor(z, labels, margin=margin)
    return _zero_invalid(loss, valid), valid


def triplet_hard_reference(
    z: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: str = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense batch-hard triplet loss per anchor: ``(loss, valid)``."""
    loss, valid, _ = _dense().triplet_per_anchor(
        z, labels, margin=margin, distance=distance, mining="hard"
    )
    return _zero_invalid(loss, valid), valid


def triplet_all_reference(
    z: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: str = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense batch-all triplet sums and counts per anchor: ``(total, count, valid)``."""
    total, valid, count = _dense().triplet_per_anchor(
        z, labels, margin=margin, distance=distance, mining="all"
    )
    return _zero_invalid(total, valid), count, valid


def triplet_semihard_reference(
    z: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: str = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense semi-hard triplet loss per anchor (Schroff et al. 2015): ``(loss, valid)``."""
    loss, valid, _ = _dense().triplet_per_anchor(
        z, labels, margin=margin, distance=distance, mining="semihard"
    )
    return _zero_invalid(loss, valid), valid


def multi_similarity_reference(
    z: torch.Tensor, labels: torch.Tensor, *, alpha: float = 2.0, beta: float = 50.0,
    base: float = 0.5, epsilon: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense multi-similarity loss per anchor: ``(loss, valid)``."""
    loss, valid = _dense().multi_similarity_per_anchor(
        z, labels, alpha=alpha, beta=beta, base=base, epsilon=epsilon
    )
    return _zero_invalid(loss, valid), valid
