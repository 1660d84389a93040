"""The small CNN the example scripts train (imported by them; not a script itself).

Three 3 x 3 convolutions, each followed by a normalisation layer and a ReLU, then global
average pooling. Without the normalisation layers this network barely trains in the
examples' few epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def small_cnn(norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """Images ``(N, 1, H, W)`` -> features ``(N, 64)``.

    Args:
        norm: builds the normalisation layer for a number of channels; batch
            normalisation by default (``lambda c: nn.GroupNorm(8, c)`` normalises each
            image on its own, which keeps a data-parallel run equal to one process).
    """
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
    measured once on the final weights, evaluation normalises as training did.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over the batches below
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start : start + batch_size])
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
