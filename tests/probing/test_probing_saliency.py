"""grad_cam against the CAM identity, mask_energy against a loop, and their errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nodulebench.probing import grad_cam, mask_energy


def _gap_model(stride: int = 1, seed: int = 0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, stride=stride),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _images(n: int = 3, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("target", [0, 1])
def test_equals_cam_for_global_average_pooling_heads(stride: int, target: int) -> None:
    # With GAP + linear, dy/dA_c = w_c / (hw) everywhere, so Grad-CAM is the class
    # activation map ReLU(sum_c w_c A_c) / (hw) (Zhou et al., 2016).
    model, x = _gap_model(stride), _images()
    maps = grad_cam(model, "1", x, target=target)
    with torch.no_grad():
        activation = model[1](model[0](x))
        weight = model[4].weight[target]
        hw = activation.shape[2] * activation.shape[3]
        cam = F.relu((weight[None, :, None, None] * activation).sum(1, keepdim=True)) / hw
        if stride != 1:
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert maps.shape == (3, 1, 12, 12)
    torch.testing.assert_close(maps, cam, rtol=1e-5, atol=1e-7)


def test_target_forms_agree_and_default_follows_prediction() -> None:
    model, x = _gap_model(), _images(4)
    predicted = model(x).argmax(dim=1)
    per_image = torch.stack(
        [grad_cam(model, "1", x[i : i + 1], int(c))[0] for i, c in enumerate(predicted)]
    )
    torch.testing.assert_close(grad_cam(model, "1", x), per_image)
    torch.testing.assert_close(grad_cam(model, "1", x, predicted), per_image)


def test_single_logit_model_and_parameter_free_model() -> None:
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))
    x = _images(2)
    # y = mean(x): Grad-CAM at the input is the image itself divided by H*W.
    torch.testing.assert_close(grad_cam(model, "0", x), x / 144)


def test_leaves_parameter_gradients_and_modes_untouched() -> None:
    model = _gap_model()
    model.train()
    grad_cam(model, "1", _images())
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_energy_lands_on_the_planted_region() -> None:
    # A "blob detector": one channel that responds to bright pixels; images with a
    # bright square on a dim textured background.
    x = 0.1 * _images(4, 16)
    region = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    region[:, :, 3:7, 9:13] = True
    x = x + 0.9 * region
    detector = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        detector.weight.fill_(1.0)
        detector.bias.fill_(-0.5)
    model = nn.Sequential(detector, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))
    shares = mask_energy(grad_cam(model, "1", x), {"blob": region})
    assert bool((shares["blob"] > 0.99).all())


def _reference_shares(maps, masks):
    n = maps.shape[0]
    out = {k: torch.zeros(n, dtype=torch.float64) for k in [*masks, "background"]}
    for i in range(n):
        total = float(maps[i].sum())
        for pixel in range(maps[i].numel()):
            owner = "background"
            for name, mask in masks.items():  # later masks take precedence
                if bool(mask[i].flatten()[pixel]):
                    owner = name
            out[owner][i] += float(maps[i].flatten()[pixel]) / total
    return out


def test_mask_energy_partitions_with_later_masks_taking_precedence() -> None:
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 1, 5, 5, generator=g)
    nodule = torch.rand(3, 1, 5, 5, generator=g) > 0.4
    spicules = torch.rand(3, 1, 5, 5, generator=g) > 0.7
    calcification = torch.rand(3, 1, 5, 5, generator=g) > 0.8
    masks = {"nodule": nodule, "spicules": spicules, "calcification": calcification}
    shares = mask_energy(maps, masks)
    assert list(shares) == ["nodule", "spicules", "calcification", "background"]
    expected = _reference_shares(maps, masks)
    for name in shares:
        torch.testing.assert_close(shares[name], expected[name])
    torch.testing.assert_close(sum(shares.values()), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda: grad_cam(_gap_model(), "4", _images()),
            ValueError,
            "layer '4' must have a spatial output",
        ),
        (
            lambda: grad_cam(_gap_model(), "head", _images()),
            ValueError,
            "layers: 'head' is not a module",
        ),
        (
            lambda: grad_cam(_gap_model(), "1", _images(), target=2),
            ValueError,
            "target must index one of the 2 classes",
        ),
        (
            lambda: grad_cam(_gap_model(), "1", _images(), target=torch.zeros(2).long()),
            ValueError,
            "target must be an integer tensor of shape (3,)",
        ),
        (
            lambda: grad_cam(nn.Sequential(nn.Identity(), nn.Flatten(0, -1)), "0", _images(1)),
            ValueError,
            "the model must return logits",
        ),
        (
            lambda: grad_cam(
                nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(0)),
                "0",
                _images(),
                target=1,
            ),
            ValueError,
            "target must be None for a model with a single logit",
        ),
        (
            lambda: grad_cam(_gap_model(), "1", _images()[0]),
            ValueError,
            "images must have shape (N, C, H, W) or (N, C, D, H, W)",
        ),
        (
            lambda: grad_cam(_gap_model(), "1", (_images() * 9).long()),
            TypeError,
            "images must have a floating-point dtype",
        ),
        (
            lambda: mask_energy(torch.zeros(2, 1, 3, 3), {}),
            ValueError,
            "images [0, 1] are all zero",
        ),
        (lambda: mask_energy(-torch.ones(2, 1, 3, 3), {}), ValueError, "non-negative"),
        (
            lambda: mask_energy(torch.ones(2, 1, 3, 3), {"a": torch.ones(2, 1, 3, 3)}),
            TypeError,
            "masks['a'] must be a bool tensor",
        ),
        (
            lambda: mask_energy(
                torch.ones(2, 1, 3, 3), {"a": torch.ones(2, 1, 3, 4, dtype=torch.bool)}
            ),
            ValueError,
            "masks['a'] must have the maps' shape (2, 1, 3, 3)",
        ),
        (
            lambda: mask_energy(
                torch.ones(2, 1, 3, 3), {"background": torch.ones(2, 1, 3, 3, dtype=torch.bool)}
            ),
            ValueError,
            "reserved region 'background'",
        ),
        (
            lambda: mask_energy(torch.ones(2, 2, 3, 3), {}),
            ValueError,
            "maps must have shape (N, 1, H, W) or (N, 1, D, H, W)",
        ),
    ],
)
def test_bad_input_names_the_argument(call, exc, fragment) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        call()


def test_input_gradients_of_a_linear_model_are_its_weights() -> None:
    # y_k = sum_c,u W[k, c, u] x[c, u], so |dy_k / dx| summed over channels is sum_c |W[k, c]|.
    from nodulebench.probing import input_gradients

    g = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 2 * 4 * 5, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weights)
    images = torch.rand(3, 2, 4, 5, generator=g)
    for target in (0, 1):
        maps = input_gradients(model, images, target=target)
        expected = weights[target].reshape(2, 4, 5).abs().sum(dim=0)
        assert maps.shape == (3, 1, 4, 5)
        assert torch.allclose(maps, expected.expand(3, 1, 4, 5), atol=1e-6)
    assert model[1].weight.grad is None
    per_image = input_gradients(model, images, target=torch.tensor([0, 1, 0]))
    assert torch.allclose(per_image[1], input_gradients(model, images, target=1)[1])
    with pytest.raises(ValueError, match="target must index one of the 2 classes"):
        input_gradients(model, images, target=2)
