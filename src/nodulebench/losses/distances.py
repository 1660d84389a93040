"""Pairwise distances between embedding rows, safe where two rows coincide.

The definitions live in ``nodulebench.kernels.distances``, beside the dense
reference losses that use them; this module is their public name on the losses side.
"""

from __future__ import annotations

from nodulebench.kernels.distances import (
    DISTANCES,
    EUCLIDEAN_EPS,
    cosine_distance,
    euclidean_distance,
    pairwise_distance,
    squared_euclidean_distance,
)

__all__ = [
    "DISTANCES",
    "EUCLIDEAN_EPS",
    "cosine_distance",
    "euclidean_distance",
    "pairwise_distance",
    "squared_euclidean_distance",
]
