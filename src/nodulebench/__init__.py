"""nodulebench: how the choice of loss decides what a classifier learns.

Synthetic lung-nodule data with known, controllable factors; cross-entropy and
contrastive losses with exact semantics and memory-efficient kernels; probes that
tell which factors a network encodes and which it uses.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from nodulebench import probing
from nodulebench.data import NoduleSpec, SyntheticNodules
from nodulebench.probing import (
    extract_features,
    grad_cam,
    intervention_sensitivity,
    linear_cka,
    mask_energy,
    probe_factors,
    project_embeddings,
)

__all__ = [
    "__version__",
    # data
    "NoduleSpec",
    "SyntheticNodules",
    # probing
    "extract_features",
    "grad_cam",
    "intervention_sensitivity",
    "linear_cka",
    "mask_energy",
    "probe_factors",
    "probing",
    "project_embeddings",
]
