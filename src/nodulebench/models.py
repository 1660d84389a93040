"""Encoders for the synthetic nodules: small CNNs and a ResNet-18 for one-channel inputs.

Two kinds of network live here:

* :func:`small_cnn`, a three-convolution feature extractor, the one the examples and
  the quickstart train (``(N, 1, H, W)`` -> ``(N, 64)``);
* the study's encoders :class:`SmallCNN`, :class:`SmallCNN3d` and :class:`ResNet18`, whose
  stages are named ``stage1`` ... ``stage4`` and ``pool`` (:data:`STAGES`) so that probes,
  CKA and Grad-CAM can hook the same names whatever the architecture. ``dims`` says
  whether an encoder reads images ``(N, 1, H, W)`` (2) or volumes ``(N, 1, D, H, W)`` (3),
  ``saliency_stage`` which stage Grad-CAM reads, ``out_dim`` the feature size.

:func:`create_encoder` builds one of the study's encoders by name.

Example:
    >>> import torch
    >>> from nodulebench.models import create_encoder, small_cnn
    >>> small_cnn()(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 64])
    >>> encoder = create_encoder("small_cnn", width=8)
    >>> encoder(torch.zeros(2, 1, 32, 32)).shape, encoder.out_dim
    (torch.Size([2, 64]), 64)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ENCODERS",
    "STAGES",
    "BasicBlock",
    "GlobalAveragePool",
    "ResNet18",
    "SmallCNN",
    "SmallCNN3d",
    "create_encoder",
    "recompute_batch_norm",
    "small_cnn",
]

#: The names of the study encoders' stages, in order; ``"pool"`` is the ``(N, D)`` feature.
STAGES = ("stage1", "stage2", "stage3", "stage4", "pool")


def small_cnn(norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """Three 3 x 3 convolutions with normalisation and ReLU, then global average pooling.

    Images ``(N, 1, H, W)`` -> features ``(N, 64)``. Without the normalisation layers
    this network barely trains in a few epochs. This is the examples' network; the
    study's encoder named ``"small_cnn"`` is :class:`SmallCNN` (four named stages).

    Args:
        norm: builds the normalisation layer for a number of channels; batch
            normalisation by default (``lambda c: nn.GroupNorm(8, c)`` normalises each
            image on its own, which keeps a data-parallel run equal to one process).

    Returns:
        A fresh :class:`torch.nn.Sequential` (initialised from torch's global RNG, like
        any torch layer).

    Example:
        >>> small_cnn()(torch.zeros(4, 1, 32, 32)).shape
        torch.Size([4, 64])
    """
    if not callable(norm):
        raise TypeError(f"norm must be a callable (channels -> nn.Module); got {norm!r}")
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        norm(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        norm(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        norm(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every batch-norm layer's running statistics on ``images``; eval mode after.

    The running averages kept during training lag behind weights that are still moving;
    measured once on the final weights, evaluation normalises as training did. Each layer's
    running mean and variance become the plain average over the batches of ``images``.

    Args:
        model: any module; its batch-norm layers are updated, the rest is untouched.
        images: ``(N, ...)`` inputs of ``model``.
        batch_size: images per forward pass, ``>= 1``.

    Example:
        >>> net = small_cnn()
        >>> recompute_batch_norm(net, torch.rand(8, 1, 32, 32))
        >>> net.training
        False
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over the batches below
    model.train()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()


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
    """Global average pooling to ``(N, C)`` for images or volumes (any spatial rank).

    Equal to :class:`torch.nn.AdaptiveAvgPool2d` ``(1)`` followed by a flatten, but its
    gradient keeps a channels-last input's memory layout.

    Example:
        >>> GlobalAveragePool()(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` means of ``(N, C, *spatial)``."""
        return _ChannelMean.apply(x)  # type: ignore[no-untyped-call,no-any-return]


def _check_width(width: int) -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1; got {width!r}")
    return width


class SmallCNN(nn.Module):
    """Four 3x3 conv stages (the last three halve the resolution), global average pooling.

    Images ``(N, 1, H, W)`` -> features ``(N, 8 * width)``. Small on purpose: a study
    trains dozens of these on a laptop CPU.

    Args:
        width: channels of the first stage (doubled by each later one), ``>= 1``.

    Example:
        >>> SmallCNN(width=4)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 32])
    """

    dims = 2
    # Stage 3 keeps an 8 x 8 grid at 32 px (stride 4): fine enough to separate the nodule
    # core, its spicules and the background, which stage 4's 4 x 4 cannot.
    saliency_stage = "stage3"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w, dims = _check_width(width), self.dims
        self.stage1 = nn.Sequential(*_conv_bn_relu(1, w, dims=dims))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w, 2 * w, 2, dims))
        self.stage3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w, 2, dims))
        self.stage4 = nn.Sequential(*_conv_bn_relu(4 * w, 8 * w, 2, dims))
        self.pool = GlobalAveragePool()
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, out_dim)`` of inputs ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``."""
        return self.pool(self.stage4(self.stage3(self.stage2(self.stage1(x)))))  # type: ignore[no-any-return]

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output: ``(N, C, [d,] h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x)


class SmallCNN3d(SmallCNN):
    """:class:`SmallCNN` for volumes ``(N, 1, D, H, W)``: 3x3x3 convs, BatchNorm3d.

    Grad-CAM reads stage 2, whose stride 2 keeps an 8 x 8 x 8 grid at 16 voxels a side
    (stage 3 would leave 4 x 4 x 4).

    Example:
        >>> SmallCNN3d(width=2)(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 16])
    """

    dims = 3
    saliency_stage = "stage2"


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convs with a (projected) identity shortcut.

    Args:
        cin: input channels.
        cout: output channels.
        stride: stride of the first convolution (and of the projection).
    """

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
        """Residual block output ``(N, cout, h / stride, w / stride)``."""
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small one-channel images: 3x3 stem, no max-pool, stages [2, 2, 2, 2].

    Images ``(N, 1, H, W)`` -> features ``(N, 8 * width)``.

    Args:
        width: channels of the stem and the first stage (64 in the original), ``>= 1``.

    Example:
        >>> ResNet18(width=4)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 32])
    """

    dims = 2
    saliency_stage = "stage3"

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = _check_width(width)
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
        return self.pool(x)  # type: ignore[no-any-return]

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, spatial ``(N, C, h, w)`` for ``stage1..4``, ``(N, D)`` pooled."""
        return _stage_outputs(self, x, self.stem)


def _stage_outputs(
    encoder: nn.Module, x: torch.Tensor, stem: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    out = {}
    if stem is not None:
        x = stem(x)
    for name in STAGES[:-1]:
        x = getattr(encoder, name)(x)
        out[name] = x
    pool = getattr(encoder, "pool")  # noqa: B009  (a submodule, typed as Tensor | Module)
    out["pool"] = pool(x)
    return out


#: The study's encoders by name (what :func:`create_encoder` and a study config accept).
ENCODERS: dict[str, type[SmallCNN] | type[ResNet18]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "small_cnn3d": SmallCNN3d,
}


def create_encoder(name: str, width: int = 16) -> SmallCNN | ResNet18:
    """One of the study's encoders, by name (a key of :data:`ENCODERS`).

    Args:
        name: ``"small_cnn"``, ``"small_cnn3d"`` or ``"resnet18"``.
        width: channels of the first stage, ``>= 1``.

    Returns:
        The encoder; ``encoder.out_dim`` is its feature size, ``encoder.dims`` the rank of
        the inputs it reads.

    Example:
        >>> create_encoder("resnet18", width=4).out_dim
        32
    """
    if name not in ENCODERS:
        raise ValueError(f"name must be one of {', '.join(ENCODERS)}; got {name!r}")
    return ENCODERS[name](width)
