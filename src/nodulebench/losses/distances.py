"""Pairwise distances between embedding rows, safe where two rows coincide.

Convention: every function here returns a *distance* (smaller means more alike), as an
``(N, N)`` matrix over the rows of ``z`` ``(N, D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodulebench._validation import check_choice

__all__ = [
    "DISTANCES",
    "EUCLIDEAN_EPS",
    "cosine_distance",
    "euclidean_distance",
    "pairwise_distance",
    "squared_euclidean_distance",
]

#: The names :func:`pairwise_distance` accepts.
DISTANCES: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine")

#: Floor of the squared distance under the square root. The Euclidean distance of two
#: coinciding rows is ``sqrt(1e-12) = 1e-6``, so its gradient stays finite there.
EUCLIDEAN_EPS = 1e-12


def squared_euclidean_distance(z: torch.Tensor) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\max(\|z_i\|^2 + \|z_j\|^2 - 2 z_i \cdot z_j, 0)`.

    Args:
        z: ``(N, D)`` rows.

    Returns:
        ``(N, N)`` matrix; the clamp removes small negative values left by rounding.
    """
    sq_norms = (z * z).sum(dim=1)
    d2 = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (z @ z.T)
    return d2.clamp(min=0.0)


def euclidean_distance(z: torch.Tensor) -> torch.Tensor:
    r"""Euclidean distances :math:`\sqrt{\max(d^2_{ij}, 10^{-12})}`.

    The floor keeps the gradient finite when two rows coincide (the distance is
    ``1e-6`` there, not 0).

    Args:
        z: ``(N, D)`` rows.

    Returns:
        ``(N, N)`` matrix.
    """
    return squared_euclidean_distance(z).clamp(min=EUCLIDEAN_EPS).sqrt()


def cosine_distance(z: torch.Tensor) -> torch.Tensor:
    """Cosine distances ``1 - cos(z_i, z_j)`` (rows are L2-normalized first, eps 1e-12).

    Args:
        z: ``(N, D)`` rows.

    Returns:
        ``(N, N)`` matrix with values in ``[0, 2]``.
    """
    unit = F.normalize(z, p=2.0, dim=1, eps=1e-12)
    return 1.0 - unit @ unit.T


def pairwise_distance(z: torch.Tensor, distance: str) -> torch.Tensor:
    """Dispatch to one of the distances by name.

    Args:
        z: ``(N, D)`` rows.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.

    Returns:
        ``(N, N)`` distance matrix.

    Raises:
        ValueError: unknown ``distance``.
    """
    check_choice("distance", distance, DISTANCES)
    if distance == "euclidean":
        return euclidean_distance(z)
    if distance == "squared_euclidean":
        return squared_euclidean_distance(z)
    return cosine_distance(z)
