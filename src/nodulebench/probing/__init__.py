"""Probing: which factors a network *encodes* (probes) and which it *uses* (interventions).

* :func:`extract_features` collects pooled activations of named modules;
* :func:`probe_factors` fits cross-validated linear probes with shuffled-target controls;
* :func:`intervention_sensitivity` changes one generative factor at a time and measures
  the model's response (:class:`RenderCache` renders each counterfactual once when
  several models are compared);
* :func:`linear_cka` compares two representations (:func:`gram_linear_cka` from Grams);
* :func:`grad_cam` (or :func:`input_gradients`) and :func:`mask_energy` score saliency
  against ground-truth masks, and :func:`saliency_baselines` against null maps;
* :func:`cka_baselines` compares CKA with an untrained network and the pixels, over
  independent model pairs (:func:`disjoint_pairs`);
* :func:`project_embeddings` gives PCA coordinates for plotting;
* the ``plot_*`` functions (matplotlib, optional) draw the results.

Results are frozen dataclasses with ``to_dict()``; :func:`write_records` writes them to
CSV or JSON.
"""

from __future__ import annotations

from nodulebench.probing.baselines import (
    CKABaseline,
    SaliencyBaseline,
    centered_gaussian_maps,
    cka_baselines,
    coarse_mask_maps,
    disjoint_pairs,
    permuted_masks,
    saliency_baselines,
)
from nodulebench.probing.cka import gram_linear_cka, linear_cka
from nodulebench.probing.features import extract_features
from nodulebench.probing.interventions import (
    InterventionDataset,
    RenderCache,
    intervention_sensitivity,
)
from nodulebench.probing.plotting import (
    plot_embedding_scatter,
    plot_gradcam_overlays,
    plot_probe_heatmap,
    plot_sensitivity_bars,
)
from nodulebench.probing.probes import probe_factors
from nodulebench.probing.projection import EmbeddingProjection, project_embeddings
from nodulebench.probing.records import ProbeResult, SensitivityResult, write_records
from nodulebench.probing.saliency import grad_cam, input_gradients, mask_energy

__all__ = [
    "CKABaseline",
    "EmbeddingProjection",
    "InterventionDataset",
    "ProbeResult",
    "RenderCache",
    "SaliencyBaseline",
    "SensitivityResult",
    "centered_gaussian_maps",
    "cka_baselines",
    "coarse_mask_maps",
    "disjoint_pairs",
    "extract_features",
    "grad_cam",
    "gram_linear_cka",
    "input_gradients",
    "intervention_sensitivity",
    "linear_cka",
    "mask_energy",
    "permuted_masks",
    "plot_embedding_scatter",
    "plot_gradcam_overlays",
    "plot_probe_heatmap",
    "plot_sensitivity_bars",
    "probe_factors",
    "project_embeddings",
    "saliency_baselines",
    "write_records",
]
