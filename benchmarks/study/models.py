"""The study's model: a package encoder, a projection head and a linear classifier.

The encoders themselves live in :mod:`nodulebench.models`; they are re-exported here for
the study's modules.
"""

from __future__ import annotations

import torch
from torch import nn

from nodulebench.models import (
    ENCODERS,
    STAGES,
    GlobalAveragePool,
    ResNet18,
    SmallCNN,
    SmallCNN3d,
    create_encoder,
)

__all__ = [
    "ENCODERS",
    "STAGES",
    "GlobalAveragePool",
    "ResNet18",
    "SmallCNN",
    "SmallCNN3d",
    "StudyModel",
]


class StudyModel(nn.Module):
    """Encoder, projection head (for embedding losses) and linear classifier.

    ``forward`` returns the classifier's two logits, so the whole model is a plain image
    classifier for evaluation, Grad-CAM and interventions.
    """

    def __init__(self, arch: str, width: int, projection_dim: int) -> None:
        super().__init__()
        self.encoder = create_encoder(arch, width)
        dim = self.encoder.out_dim
        self.projection = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, projection_dim)
        )
        self.classifier = nn.Linear(dim, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)``: benign, malignant."""
        logits: torch.Tensor = self.classifier(self.encoder(images))
        return logits
