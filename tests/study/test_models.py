"""The encoders' global average pooling keeps the gradient's memory layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodulebench.models import GlobalAveragePool

CASES = [
    ((3, 4, 5, 6), torch.channels_last, nn.AdaptiveAvgPool2d(1)),
    ((3, 4, 5, 6), torch.contiguous_format, nn.AdaptiveAvgPool2d(1)),
    ((2, 3, 4, 5, 6), torch.channels_last_3d, nn.AdaptiveAvgPool3d(1)),
]


@pytest.mark.parametrize(("shape", "layout", "reference"), CASES)
def test_global_average_pool_matches_adaptive_pooling(shape, layout, reference) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    out = GlobalAveragePool()(x)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    expected_x = x.detach().clone().requires_grad_(True)
    expected = reference(expected_x).flatten(1)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, expected_x.grad)
    assert x.grad.is_contiguous(memory_format=layout)


def test_global_average_pool_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(GlobalAveragePool(), (x.requires_grad_(True),))
