"""Planted ground truth with the real generator: models whose inputs we know by construction.

* ``BodyAreaModel`` reads only the nodule body: a morphological opening (5 x 5) removes
  thin structures (spicules), then the soft area of what stays bright is its score.
* ``SpiculeModel`` reads only thin bright structures: the white top-hat (image minus its
  opening) above a threshold (spicules are sized in millimetres, not relative to the body,
  so their area does not grow with the nodule).

Interventions must name ``diameter_mm`` as the first model's most-used factor and
``spiculation`` as the second's, each nearly blind to the other; Grad-CAM on the spicule
model must put most of its energy inside the generator's spicule mask.
"""

from __future__ import annotations

import pytest
import torch
from _planted_models import Calibrated
from torch import nn
from torch.nn import functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed
from nodulebench.probing import grad_cam, intervention_sensitivity, mask_energy

IMAGE_SIZE = 64


def _opening(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    eroded = -F.max_pool2d(-x, k, stride=1, padding=k // 2)
    return F.max_pool2d(eroded, k, stride=1, padding=k // 2)


class Silhouette(nn.Module):
    """Soft mask of what stays bright after removing structures thinner than 5 pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((_opening(x) - 0.45) / 0.05)


class TopHat(nn.Module):
    """Thin bright structures: the image minus its opening, above a threshold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x - _opening(x) - 0.15)


class BodyAreaModel(Calibrated):
    def __init__(self) -> None:
        super().__init__()
        self.silhouette = Silhouette()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.silhouette(x).mean(dim=(1, 2, 3))


class SpiculeModel(Calibrated):
    def __init__(self) -> None:
        super().__init__()
        self.tophat = TopHat()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.tophat(x).mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def dataset() -> SyntheticNodules:
    # Vessels and fissures are thin bright lines too, the chest wall is a bright area, and
    # ground-glass nodules fall below the silhouette threshold: hold them fixed so that
    # each model reads what it claims to. One routine-dose scanner: a top-hat also answers
    # to a low-dose lung kernel's grain.
    spec = NoduleSpec().with_marginals(
        site=Fixed("scanner_b"),
        vessels=Fixed("none"),
        calcification=Fixed("absent"),
        texture=Fixed("solid"),
        location=Fixed("isolated"),
        fissure=Fixed("absent"),
    )
    return SyntheticNodules(spec, n=96, seed=0, image_size=IMAGE_SIZE)


def _by_factor(model: nn.Module, dataset: SyntheticNodules) -> dict[str, float]:
    results = intervention_sensitivity(model, dataset, n=32, seed=0, batch_size=32)
    return {r.factor: r.mean_abs_probability_change for r in results}


def test_size_model_uses_diameter_not_spiculation(dataset: SyntheticNodules) -> None:
    model = BodyAreaModel().calibrate(dataset.render(torch.arange(len(dataset))))
    change = _by_factor(model, dataset)
    assert max(change, key=change.__getitem__) == "diameter_mm", change
    assert change["spiculation"] < 0.3 * change["diameter_mm"], change


def test_spicule_model_uses_spiculation_not_diameter(dataset: SyntheticNodules) -> None:
    model = SpiculeModel().calibrate(dataset.render(torch.arange(len(dataset))))
    change = _by_factor(model, dataset)
    assert max(change, key=change.__getitem__) == "spiculation", change
    assert change["diameter_mm"] < 0.3 * change["spiculation"], change


def test_grad_cam_energy_sits_in_the_mask_each_model_reads(dataset: SyntheticNodules) -> None:
    spiculated = torch.nonzero(dataset.factors["spiculation"] > 0.6).flatten()[:12]
    images, masks = dataset.render(spiculated, return_masks=True)
    spicule_model = SpiculeModel().calibrate(images)
    shares = mask_energy(grad_cam(spicule_model, "tophat", images, target=1), masks)
    assert float(shares["spicules"].mean()) > 0.8, shares
    size_model = BodyAreaModel().calibrate(images)
    shares = mask_energy(grad_cam(size_model, "silhouette", images, target=1), masks)
    # The opening keeps the wide bases of spicules, which the mask counts as spicule:
    # the body model's energy is mostly, not only, in the core.
    assert float(shares["nodule"].mean()) > 0.5, shares
    assert float(shares["nodule"].mean()) > float(shares["spicules"].mean()), shares
    assert float(shares["background"].mean()) < 0.2, shares
