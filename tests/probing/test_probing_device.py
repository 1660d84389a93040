"""Probing on the ``--device`` given to pytest agrees with the CPU (trivially on a CPU run)."""

from __future__ import annotations

import torch
from torch import nn

from nodulebench import SyntheticNodules
from nodulebench.probing import extract_features, grad_cam, intervention_sensitivity


def _model() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_device_results_match_cpu(device: torch.device) -> None:
    data = SyntheticNodules(n=12, seed=1, image_size=16)
    cpu_model, dev_model = _model(), _model().to(device)
    cpu = extract_features(cpu_model, data, ["1", "4"], batch_size=5)
    dev = extract_features(dev_model, data, ["1", "4"], batch_size=5)
    for name in cpu:
        torch.testing.assert_close(dev[name], cpu[name], rtol=1e-3, atol=1e-3)
    images = data.render(torch.arange(4))
    torch.testing.assert_close(
        grad_cam(dev_model, "1", images.to(device), target=1).cpu(),
        grad_cam(cpu_model, "1", images, target=1),
        rtol=1e-3,
        atol=1e-4,
    )
    kwargs = {"factors": ["diameter_mm", "spiculation"], "n": 8, "embedding_layer": "3"}
    on_cpu = intervention_sensitivity(cpu_model, data, **kwargs)
    on_dev = intervention_sensitivity(dev_model, data, **kwargs)
    for a, b in zip(on_cpu, on_dev, strict=True):
        assert a.factor == b.factor and a.values == b.values
        assert abs(a.mean_abs_probability_change - b.mean_abs_probability_change) < 1e-3
