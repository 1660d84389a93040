"""Which features did a model learn? Probes, interventions, saliency, layer Grams for CKA."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nodulebench.probing import (
    grad_cam,
    intervention_sensitivity,
    mask_energy,
    probe_factors,
    project_embeddings,
)

from .config import StudyConfig
from .models import StudyModel
from .training import autocast_context, encode

if TYPE_CHECKING:
    from .runner import ExperimentData

EMBEDDING_LAYER = "encoder.pool"
OVERLAY_SAMPLES = 6


@torch.no_grad()
def stage_grams(
    model: StudyModel, images: torch.Tensor, device: torch.device
) -> dict[str, torch.Tensor]:
    """``{stage: (n, n) float64 Gram matrix}`` of each stage's unpooled, flattened output.

    Gram matrices are all linear CKA needs, and they stay ``n x n`` whatever the size of a
    spatial feature map, so every stage is compared with its full spatial layout.
    """
    model.eval()
    outputs = model.encoder.stage_outputs(images.to(device))
    grams = {}
    for name, value in outputs.items():
        flat = value.flatten(1).double()
        grams[name] = (flat @ flat.T).cpu()
    return grams


def saliency_energy(
    maps: torch.Tensor, masks: dict[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Share of the attribution and of the area in each region, and their ratio.

    ``energy_per_area`` is the mean energy share over the mean area share: 1 means the
    attribution is spread as the pixels are; above 1, the region draws more than its area.
    """
    energy = mask_energy(maps, masks)
    area = mask_energy(torch.ones_like(maps), masks)
    out: dict[str, dict[str, float]] = {"energy_share": {}, "area_share": {}, "energy_per_area": {}}
    for region in energy:
        e, a = float(energy[region].mean()), float(area[region].mean())
        out["energy_share"][region] = e
        out["area_share"][region] = a
        if a > 0:  # a region absent from every image has no density
            out["energy_per_area"][region] = e / a
    return out


def probeable(factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The factors a linear probe can be fit on.

    A categorical factor needs at least two classes and two samples in every class present;
    a small probe set can miss that for a factor with many rare categories (calcification's
    seven patterns), and such a factor is left out of the probe table.
    """
    kept: dict[str, torch.Tensor] = {}
    for name, values in factors.items():
        if not values.is_floating_point():
            counts = torch.unique(values, return_counts=True)[1]
            if counts.numel() < 2 or int(counts.min()) < 2:
                continue
        kept[name] = values
    return kept


def identify_features(
    config: StudyConfig,
    model: StudyModel,
    data: ExperimentData,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Probe, intervene on and explain one trained model on the (decorrelated) probe set.

    Returns:
        The JSON part of the run record (``probes``, ``sensitivity``, ``saliency``) and the
        arrays kept for figures and CKA (the Gram matrix of every stage on the first
        ``probe.cka_n`` probe images, a 2-D projection of the encoder output, a few
        saliency maps).
    """
    p = config.probe
    probe_set = data.probe_set
    precision = config.train.autocast
    pooled = encode(model, data.probe_images, device, precision).cpu()
    probes = probe_factors(pooled, probeable(probe_set.factors), folds=p.folds, seed=0)
    with autocast_context(precision, device):  # read as trained, like the test sets
        sensitivity = intervention_sensitivity(
            model,
            data.probe_renders,
            n=p.intervention_n,
            seed=0,
            embedding_layer=EMBEDDING_LAYER,
            device=device,
        )
    images = data.probe_images[: p.gradcam_n]
    masks = {name: mask[: p.gradcam_n] for name, mask in data.probe_masks.items()}
    layer = f"encoder.{model.encoder.saliency_stage}"
    maps = grad_cam(model, layer, images.to(device)).cpu()
    # A map that is zero everywhere attributes nothing; its shares are undefined.
    attributed = maps.flatten(1).amax(dim=1) > 0
    saliency: dict[str, Any] = {"layer": layer, "attributed": int(attributed.sum())}
    if bool(attributed.any()):
        saliency.update(
            saliency_energy(maps[attributed], {k: v[attributed] for k, v in masks.items()})
        )
    grams = stage_grams(model, data.probe_images[: p.cka_n], device)
    arrays = {f"gram.{name}": value.numpy().astype(np.float32) for name, value in grams.items()}
    arrays["projection"] = project_embeddings(pooled, dim=2).coordinates.numpy()
    arrays["saliency.maps"] = maps[:OVERLAY_SAMPLES].numpy()
    arrays["saliency.images"] = images[:OVERLAY_SAMPLES].numpy()
    arrays["saliency.spicules"] = masks["spicules"][:OVERLAY_SAMPLES].numpy()
    record = {
        "probes": [r.to_dict() for r in probes],
        "sensitivity": [r.to_dict() for r in sensitivity],
        "saliency": saliency,
    }
    return record, arrays
