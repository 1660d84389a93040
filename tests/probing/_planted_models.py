"""A planted model's calibration, shared by the 2-D and 3-D planted-model tests."""

from __future__ import annotations

import torch
from torch import nn


class Calibrated(nn.Module):
    """Binary logits ``(N, 2)`` from a scalar score, centred and scaled on a reference set."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrate(self, inputs: torch.Tensor) -> Calibrated:
        with torch.no_grad():
            scores = self.score(inputs)
            self.centre.copy_(scores.median())
            self.scale.copy_(scores.std())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = 2.0 * (self.score(x) - self.centre) / self.scale
        return torch.stack([-logit / 2, logit / 2], dim=1)
