"""The study's networks: an encoder with named stages, a projection head, a linear classifier.

Every encoder exposes its stages as ``stage1`` … ``stageK`` and a ``pool`` so that probes
and CKA can hook the same names whatever the architecture.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Four 3x3 conv stages (the last three halve the resolution), global average pooling.

    Small on purpose: the quick preset trains dozens of these on a 2-core CPU.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stage1 = nn.Sequential(*_conv_bn_relu(1, w))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w, 2 * w, 2))
        self.stage3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w, 2))
        self.stage4 = nn.Sequential(*_conv_bn_relu(4 * w, 8 * w, 2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, out_dim)`` of images ``(N, 1, H, W)``."""
        return self.pool(self.stage4(self.stage3(self.stage2(self.stage1(x)))))

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, spatial ``(N, C, h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x)


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs with a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small one-channel images: 3x3 stem, no max-pool, stages [2, 2, 2, 2]."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn_relu(1, w))
        widths = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for k, cout in enumerate(widths, start=1):
            stride = 1 if k == 1 else 2
            self.add_module(f"stage{k}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                       BasicBlock(cout, cout, 1)))
            cin = cout
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, out_dim)`` of images ``(N, 1, H, W)``."""
        x = self.stem(x)
        for k in range(1, 5):
            x = getattr(self, f"stage{k}")(x)
        return self.pool(x)

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, spatial ``(N, C, h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x, self.stem)


def _stage_outputs(encoder: nn.Module, x: torch.Tensor,
                   stem: nn.Module | None = None) -> dict[str, torch.Tensor]:
    out = {}
    if stem is not None:
        x = stem(x)
    for name in STAGES[:-1]:
        x = getattr(encoder, name)(x)
        out[name] = x
    out["pool"] = encoder.pool(x)
    return out


ENCODERS = {"small_cnn": SmallCNN, "resnet18": ResNet18}
STAGES = ("stage1", "stage2", "stage3", "stage4", "pool")


class StudyModel(nn.Module):
    """Encoder, projection head (for embedding losses) and linear classifier.

    ``forward`` returns the classifier's two logits, so the whole model is a plain image
    classifier for evaluation, Grad-CAM and interventions.
    """

    def __init__(self, arch: str, width: int, projection_dim: int) -> None:
        super().__init__()
        self.encoder = ENCODERS[arch](width)
        dim = self.encoder.out_dim
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True),
                                        nn.Linear(dim, projection_dim))
        self.classifier = nn.Linear(dim, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)``: benign, malignant."""
        return self.classifier(self.encoder(images))
