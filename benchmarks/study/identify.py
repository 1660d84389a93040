"""Which features did a model learn? Probes, interventions, Grad-CAM, layer features for CKA."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nodulebench.probing import (
    extract_features,
    grad_cam,
    intervention_sensitivity,
    mask_energy,
    probe_factors,
    project_embeddings,
)

from .config import StudyConfig
from .models import STAGES, StudyModel

if TYPE_CHECKING:
    from .runner import ExperimentData

GRADCAM_LAYER = "encoder.stage4"
EMBEDDING_LAYER = "encoder.pool"
OVERLAY_SAMPLES = 6


def identify_features(
    config: StudyConfig, model: StudyModel, data: ExperimentData, seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Probe, intervene on and explain one trained model on the (decorrelated) probe set.

    Returns:
        The JSON part of the run record (``probes``, ``sensitivity``, ``gradcam_energy``)
        and the arrays kept for figures and CKA (pooled features of every stage, a 2-D
        projection of the encoder output, a few Grad-CAM maps).
    """
    p = config.probe
    probe_set = data.probe_set
    features = extract_features(model.encoder, TensorDataset(data.probe_images), list(STAGES),
                                device=device)
    probes = probe_factors(features["pool"], probe_set.factors, folds=p.folds, seed=seed)
    sensitivity = intervention_sensitivity(
        model, probe_set, n=p.intervention_n, seed=seed, embedding_layer=EMBEDDING_LAYER,
        device=device,
    )
    images = data.probe_images[:p.gradcam_n]
    masks = {name: mask[:p.gradcam_n] for name, mask in data.probe_masks.items()}
    maps = grad_cam(model, GRADCAM_LAYER, images.to(device)).cpu()
    # A map that is zero everywhere attributes nothing; its shares are undefined.
    attributed = maps.flatten(1).amax(dim=1) > 0
    energy = mask_energy(maps[attributed], {k: v[attributed] for k, v in masks.items()})
    projection = project_embeddings(features["pool"], dim=2)
    arrays = {f"features.{name}": value.numpy().astype(np.float32)
              for name, value in features.items()}
    arrays["projection"] = projection.coordinates.numpy()
    arrays["gradcam.maps"] = maps[:OVERLAY_SAMPLES].numpy()
    arrays["gradcam.images"] = images[:OVERLAY_SAMPLES].numpy()
    arrays["gradcam.spicules"] = masks["spicules"][:OVERLAY_SAMPLES].numpy()
    arrays["gradcam.nodule"] = masks["nodule"][:OVERLAY_SAMPLES].numpy()
    record = {
        "probes": [r.to_dict() for r in probes],
        "sensitivity": [r.to_dict() for r in sensitivity],
        "gradcam_energy": {region: float(share.mean()) for region, share in energy.items()},
        "gradcam_attributed": int(attributed.sum()),
    }
    return record, arrays
