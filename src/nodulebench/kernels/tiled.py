"""The pure-PyTorch tiled engine (``backend="tiled"``): one import point for its kernels.

Every kernel takes *prepared* inputs (``z`` of shape ``(N, D)``, already flattened,
normalized where the loss normalizes, and upcast to float32 or float64; ``labels`` of shape
``(N,)`` int64, already expanded per view) and returns the per-anchor quantities of the
pinned loss definitions together with the valid-anchor mask. Each is a custom
:class:`torch.autograd.Function` over blocks of anchor rows that never holds an ``N x N``
matrix, in the forward or the backward pass; it runs on any device. The pairwise kernels
also take ``row_range`` (a distributed loss's own rows against the gathered batch) and
``reference=(ref_z, ref_labels)`` (every row against a separate reference set of ``M``
rows, no self-pairs, gradients to both; never an ``N x M`` matrix either).
"""

from __future__ import annotations

from nodulebench.kernels.tiled_distance import (
    contrastive_tiled,
    triplet_all_tiled,
    triplet_hard_tiled,
)
from nodulebench.kernels.tiled_multisim import multi_similarity_tiled
from nodulebench.kernels.tiled_supcon import cnc_tiled, supcon_tiled
from nodulebench.kernels.tiled_two_tower import clip_tiled, siglip_tiled

__all__ = [
    "clip_tiled",
    "cnc_tiled",
    "contrastive_tiled",
    "multi_similarity_tiled",
    "siglip_tiled",
    "supcon_tiled",
    "triplet_all_tiled",
    "triplet_hard_tiled",
]
