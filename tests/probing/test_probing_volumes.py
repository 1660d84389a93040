"""Probing on volumes: planted 3-D models whose inputs we know by construction.

* ``BodyVolumeModel`` reads only the nodule body: a 3-D morphological opening (3 voxels)
  removes thin structures (spicules), then the soft volume of what stays bright is its score.
* ``SpiculeVolumeModel`` reads only thin bright structures: the 3-D white top-hat above a
  threshold, away from the opened body, seen through a ``Conv3d`` (an identity kernel)
  that Grad-CAM hooks.
"""

from __future__ import annotations

import pytest
import torch
from _planted_models import Calibrated
from torch import nn
from torch.nn import functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed
from nodulebench.probing import (
    extract_features,
    grad_cam,
    intervention_sensitivity,
    mask_energy,
)

VOLUME_SIZE = 48


def _opening(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    eroded = -F.max_pool3d(-x, k, stride=1, padding=k // 2)
    return F.max_pool3d(eroded, k, stride=1, padding=k // 2)


class Silhouette(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((_opening(x) - 0.45) / 0.05)


class TopHat(nn.Module):
    """Thin bright structures away from the body: the voxelised body's rim is no spicule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opened = _opening(x)
        near_body = F.max_pool3d(torch.sigmoid((opened - 0.45) / 0.05), 3, 1, 1)
        return F.relu(x - opened - 0.1) * (1 - near_body)


class BodyVolumeModel(Calibrated):
    def __init__(self) -> None:
        super().__init__()
        self.silhouette = Silhouette()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.silhouette(x).mean(dim=(1, 2, 3, 4))


class SpiculeVolumeModel(Calibrated):
    def __init__(self) -> None:
        super().__init__()
        self.tophat = TopHat()
        self.conv = nn.Conv3d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.tophat(x)).mean(dim=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def dataset() -> SyntheticNodules:
    # thin bright lines that are not spicules (vessels, fissures), the chest wall and
    # ground glass are held fixed so that each model reads what it claims to; one
    # routine-dose scanner, since a top-hat also answers to a low-dose lung kernel's grain
    spec = NoduleSpec().with_marginals(
        site=Fixed("scanner_b"),
        vessels=Fixed("none"),
        calcification=Fixed("absent"),
        texture=Fixed("solid"),
        location=Fixed("isolated"),
        fissure=Fixed("absent"),
        slice_thickness_mm=Fixed(1.0),
    )
    return SyntheticNodules(spec, n=48, seed=0, volume_size=VOLUME_SIZE)


def _by_factor(model: nn.Module, dataset: SyntheticNodules) -> dict[str, float]:
    results = intervention_sensitivity(
        model,
        dataset,
        n=16,
        seed=0,
        batch_size=16,
        factors=["diameter_mm", "spiculation", "noise_hu", "orientation_deg"],
    )
    return {r.factor: r.mean_abs_probability_change for r in results}


def test_body_model_uses_diameter_not_spiculation(dataset: SyntheticNodules) -> None:
    model = BodyVolumeModel().calibrate(dataset.render(torch.arange(len(dataset))))
    change = _by_factor(model, dataset)
    assert max(change, key=change.__getitem__) == "diameter_mm", change
    assert change["spiculation"] < 0.3 * change["diameter_mm"], change


def test_spicule_model_uses_spiculation_not_diameter(dataset: SyntheticNodules) -> None:
    model = SpiculeVolumeModel().calibrate(dataset.render(torch.arange(len(dataset))))
    change = _by_factor(model, dataset)
    assert max(change, key=change.__getitem__) == "spiculation", change
    assert change["diameter_mm"] < 0.3 * change["spiculation"], change


def test_grad_cam_on_a_conv3d_puts_energy_in_the_spicule_mask(dataset: SyntheticNodules) -> None:
    spiculated = torch.nonzero(dataset.factors["spiculation"] > 0.6).flatten()[:8]
    volumes, masks = dataset.render(spiculated, return_masks=True)
    model = SpiculeVolumeModel().calibrate(volumes)
    maps = grad_cam(model, "conv", volumes, target=1)
    assert maps.shape == volumes.shape and bool((maps >= 0).all())
    shares = mask_energy(maps, masks)
    assert float(shares["spicules"].mean()) > 0.7, shares
    body = mask_energy(
        grad_cam(BodyVolumeModel().calibrate(volumes), "silhouette", volumes, target=1), masks
    )
    assert float(body["body"].mean() + body["nodule"].mean()) > 0.5, body
    assert float(body["background"].mean()) < 0.3, body


def test_grad_cam_upsamples_a_coarse_conv3d_trilinearly() -> None:
    model = nn.Sequential(
        nn.Conv3d(1, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    volumes = torch.rand(2, 1, 8, 10, 12)
    maps = grad_cam(model, "1", volumes, target=0)
    assert maps.shape == (2, 1, 8, 10, 12) and bool((maps >= 0).all())
    with pytest.raises(ValueError, match=r"spatial output \(N, C, d, h, w\)"):
        grad_cam(model, "3", volumes)


def test_extract_features_pools_volumes(dataset: SyntheticNodules) -> None:
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    feats = extract_features(model, dataset, ["0", "4"], batch_size=16)
    assert feats["0"].shape == (len(dataset), 4) and feats["4"].shape == (len(dataset), 2)
    direct = model(dataset.render(torch.arange(4))).detach()
    torch.testing.assert_close(feats["4"][:4], direct, rtol=1e-4, atol=1e-5)


def test_mask_energy_rejects_masks_of_another_rank() -> None:
    maps = torch.ones(1, 1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"masks\['a'\] must have shape like maps"):
        mask_energy(maps, {"a": torch.ones(1, 1, 3, 3, dtype=torch.bool)})
