"""The study's networks: an encoder with named stages, a projection head, a linear classifier.

Every encoder exposes its stages as ``stage1`` … ``stageK`` and a ``pool`` so that probes
and CKA can hook the same names whatever the architecture; ``dims`` says whether it reads
images ``(N, 1, H, W)`` (2) or volumes ``(N, 1, D, H, W)`` (3), and ``saliency_stage``
which stage Grad-CAM reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dims: int = 2) -> list[nn.Module]:
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return [conv(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(inplace=True)]


class _ChannelMean(torch.autograd.Function):
    """Mean over the spatial axes, whose gradient keeps the input's memory layout.

    Autograd's own backward of a mean is a broadcast view, which the ReLU backward below
    it reads across a channels-last layout at several times the cost of a dense copy.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.layout = x.shape, _layout(x)  # type: ignore[attr-defined]
        return x.mean(dim=tuple(range(2, x.ndim)))

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad: torch.Tensor,
    ) -> torch.Tensor:
        shape = ctx.shape  # type: ignore[attr-defined]
        spread = grad.div(math.prod(shape[2:])).view(*grad.shape, *[1] * (len(shape) - 2))
        return spread.expand(shape).contiguous(memory_format=ctx.layout)  # type: ignore[attr-defined]


def _layout(x: torch.Tensor) -> torch.memory_format:
    for layout in (torch.channels_last, torch.channels_last_3d):
        if x.is_contiguous(memory_format=layout) and not x.is_contiguous():
            return layout
    return torch.contiguous_format


class GlobalAveragePool(nn.Module):
    """Global average pooling to ``(N, C)`` for images or volumes (any spatial rank)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` means of ``(N, C, *spatial)``."""
        pooled: torch.Tensor = _ChannelMean.apply(x)  # type: ignore[no-untyped-call]
        return pooled


class SmallCNN(nn.Module):
    """Four 3x3 conv stages (the last three halve the resolution), global average pooling.

    Small on purpose: the quick preset trains dozens of these on a 2-core CPU.
    """

    dims = 2
    # Stage 3 keeps an 8 x 8 grid at 32 px (stride 4): fine enough to separate the nodule
    # core, its spicules and the background, which stage 4's 4 x 4 cannot.
    saliency_stage = "stage3"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w, dims = width, self.dims
        self.stage1 = nn.Sequential(*_conv_bn_relu(1, w, dims=dims))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w, 2 * w, 2, dims))
        self.stage3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w, 2, dims))
        self.stage4 = nn.Sequential(*_conv_bn_relu(4 * w, 8 * w, 2, dims))
        self.pool = GlobalAveragePool()
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, out_dim)`` of inputs ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``."""
        pooled: torch.Tensor = self.pool(self.stage4(self.stage3(self.stage2(self.stage1(x)))))
        return pooled

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output: ``(N, C, [d,] h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x)


class SmallCNN3d(SmallCNN):
    """:class:`SmallCNN` for volumes ``(N, 1, D, H, W)``: 3x3x3 convs, BatchNorm3d.

    Grad-CAM reads stage 2, whose stride 2 keeps an 8 x 8 x 8 grid at 16 voxels a side
    (stage 3 would leave 4 x 4 x 4).
    """

    dims = 3
    saliency_stage = "stage2"


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs with a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small one-channel images: 3x3 stem, no max-pool, stages [2, 2, 2, 2]."""

    dims = 2
    saliency_stage = "stage3"

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn_relu(1, w))
        widths = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for k, cout in enumerate(widths, start=1):
            stride = 1 if k == 1 else 2
            self.add_module(
                f"stage{k}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
            )
            cin = cout
        self.pool = GlobalAveragePool()
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, out_dim)`` of images ``(N, 1, H, W)``."""
        x = self.stem(x)
        for k in range(1, 5):
            x = getattr(self, f"stage{k}")(x)
        pooled: torch.Tensor = self.pool(x)
        return pooled

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, spatial ``(N, C, h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x, self.stem)


def _stage_outputs(
    encoder: nn.Module, x: torch.Tensor, stem: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if stem is not None:
        x = stem(x)
    for name in STAGES[:-1]:
        x = getattr(encoder, name)(x)
        out[name] = x
    pool: nn.Module = encoder.pool  # type: ignore[assignment]
    out["pool"] = pool(x)
    return out


ENCODERS: dict[str, type[SmallCNN] | type[ResNet18]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "small_cnn3d": SmallCNN3d,
}
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
        self.projection = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, projection_dim)
        )
        self.classifier = nn.Linear(dim, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)``: benign, malignant."""
        logits: torch.Tensor = self.classifier(self.encoder(images))
        return logits
