"""Fast backends for the pairwise losses: the tiled engine, Triton kernels, dispatch.

``nodulebench.kernels.tiled`` is pure PyTorch and always available;
``nodulebench.kernels.triton_supcon`` needs the optional ``triton`` package and is imported
only when the ``"triton"`` backend is used; ``nodulebench.kernels.dispatch`` chooses.
"""

from __future__ import annotations

from nodulebench.kernels.dispatch import (
    BACKENDS,
    KERNEL_LOSSES,
    TWO_TOWER_LOSSES,
    BackendInfo,
    get_backend_info,
    run_per_anchor,
    run_two_tower,
    select_backend,
)
from nodulebench.kernels.tiled import (
    clip_tiled,
    cnc_tiled,
    contrastive_tiled,
    multi_similarity_tiled,
    siglip_tiled,
    supcon_tiled,
    triplet_all_tiled,
    triplet_hard_tiled,
)

__all__ = [
    "BACKENDS",
    "KERNEL_LOSSES",
    "TWO_TOWER_LOSSES",
    "BackendInfo",
    "cnc_tiled",
    "clip_tiled",
    "contrastive_tiled",
    "get_backend_info",
    "multi_similarity_tiled",
    "run_per_anchor",
    "run_two_tower",
    "select_backend",
    "siglip_tiled",
    "supcon_tiled",
    "triplet_all_tiled",
    "triplet_hard_tiled",
]
