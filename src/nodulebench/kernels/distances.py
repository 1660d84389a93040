"""Pairwise distances between embedding rows, safe where two rows coincide.

The dense reference losses use them, so they live with the kernels;
:mod:`nodulebench.losses.distances` re-exports them.

Convention: every function here returns a *distance* (smaller means more alike), as an
``(N, N)`` matrix over the rows of ``z`` ``(N, D)``, or as an ``(N, M)`` matrix between
the rows of ``z`` and those of ``other`` ``(M, D)`` when ``other`` is given (anchors
against a gathered global batch).
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


def squared_euclidean_distance(z: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\max(\|z_i\|^2 + \|z_j\|^2 - 2 z_i \cdot z_j, 0)`.

    Args:
        z: ``(N, D)`` rows.
        other: ``(M, D)`` columns; ``None`` means ``z``.

    Returns:
        ``(N, N)`` or ``(N, M)`` matrix; the clamp removes small negative values left by
        rounding.
    """
    sq_norms = (z * z).sum(dim=1)
    other_sq_norms = sq_norms if other is None else (other * other).sum(dim=1)
    other = z if other is None else other
    d2 = sq_norms[:, None] + other_sq_norms[None, :] - 2.0 * (z @ other.T)
    return d2.clamp(min=0.0)


def euclidean_distance(z: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    r"""Euclidean distances :math:`\sqrt{\max(d^2_{ij}, 10^{-12})}`.

    The floor keeps the gradient finite when two rows coincide (the distance is
    ``1e-6`` there, not 0).

    Args:
        z: ``(N, D)`` rows.
        other: ``(M, D)`` columns; ``None`` means ``z``.

    Returns:
        ``(N, N)`` or ``(N, M)`` matrix.
    """
    return squared_euclidean_distance(z, other).clamp(min=EUCLIDEAN_EPS).sqrt()


def cosine_distance(z: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine distances ``1 - cos(z_i, z_j)`` (rows are L2-normalized first, eps 1e-12).

    Args:
        z: ``(N, D)`` rows.
        other: ``(M, D)`` columns; ``None`` means ``z``.

    Returns:
        ``(N, N)`` or ``(N, M)`` matrix with values in ``[0, 2]``.
    """
    unit = F.normalize(z, p=2.0, dim=1, eps=1e-12)
    other_unit = unit if other is None else F.normalize(other, p=2.0, dim=1, eps=1e-12)
    return 1.0 - unit @ other_unit.T


def pairwise_distance(
    z: torch.Tensor, distance: str, other: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch to one of the distances by name.

    Args:
        z: ``(N, D)`` rows.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        other: ``(M, D)`` columns; ``None`` means ``z``.

    Returns:
        ``(N, N)`` or ``(N, M)`` distance matrix.

    Raises:
        ValueError: unknown ``distance``.
    """
    check_choice("distance", distance, DISTANCES)
    if distance == "euclidean":
        return euclidean_distance(z, other)
    if distance == "squared_euclidean":
        return squared_euclidean_distance(z, other)
    return cosine_distance(z, other)
