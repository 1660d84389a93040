"""The encoders of nodulebench.models: shapes, stage names, batch-norm re-estimation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodulebench.models import (
    ENCODERS,
    STAGES,
    ResNet18,
    SmallCNN,
    SmallCNN3d,
    create_encoder,
    recompute_batch_norm,
    small_cnn,
)


def test_small_cnn_maps_images_to_64_features_and_takes_any_norm() -> None:
    torch.manual_seed(0)  # layer initialisation reads torch's global RNG; pytest isolates it
    net = small_cnn(norm=lambda channels: nn.GroupNorm(8, channels))
    assert net(torch.rand(3, 1, 32, 32)).shape == (3, 64)
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == 3
    with pytest.raises(TypeError, match="norm must be a callable"):
        small_cnn(norm=16)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "shape", "spatial"),
    [
        ("small_cnn", (2, 1, 32, 32), [(32, 32), (16, 16), (8, 8), (4, 4)]),
        ("resnet18", (2, 1, 32, 32), [(32, 32), (16, 16), (8, 8), (4, 4)]),
        ("small_cnn3d", (2, 1, 16, 16, 16), [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]),
    ],
)
def test_encoders_expose_named_stages_that_compose_to_forward(name, shape, spatial) -> None:
    encoder = create_encoder(name, width=2).eval()
    assert isinstance(encoder, ENCODERS[name])
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    stages = encoder.stage_outputs(x)
    assert tuple(stages) == STAGES
    widths = [2, 4, 8, 16]
    for stage, size, width in zip(STAGES[:-1], spatial, widths, strict=True):
        assert stages[stage].shape == (2, width, *size), stage
    assert encoder.out_dim == 16
    # the pooled stage is the channel mean of stage 4 and equals forward()
    torch.testing.assert_close(stages["pool"], stages["stage4"].flatten(2).mean(-1))
    torch.testing.assert_close(encoder(x), stages["pool"])
    assert hasattr(encoder, encoder.saliency_stage)


def test_encoder_classes_and_dims() -> None:
    assert (SmallCNN.dims, SmallCNN3d.dims, ResNet18.dims) == (2, 3, 2)
    assert SmallCNN3d(width=1).stage1[0].__class__ is nn.Conv3d


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_encoder("resnet"), "name must be one of small_cnn, resnet18"),
        (lambda: create_encoder("small_cnn", width=0), "width must be an integer >= 1; got 0"),
        (lambda: ResNet18(width=2.5), "width must be an integer >= 1; got 2.5"),  # type: ignore[arg-type]
    ],
)
def test_encoder_errors_name_the_argument(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_recompute_batch_norm_sets_the_plain_average_of_batch_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(8, 3, 4, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    norm = nn.BatchNorm2d(3, momentum=0.1)
    model = nn.Sequential(norm)
    recompute_batch_norm(model, images, batch_size=4)
    halves = images.split(4)
    # Planted truth: with momentum None, BatchNorm keeps the cumulative average of the
    # batch means and of the (unbiased) batch variances.
    mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in halves]).mean(0)
    var = torch.stack([h.transpose(0, 1).flatten(1).var(dim=1) for h in halves]).mean(0)
    torch.testing.assert_close(norm.running_mean, mean)
    torch.testing.assert_close(norm.running_var, var)
    assert norm.momentum == 0.1 and not model.training
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        recompute_batch_norm(model, images, batch_size=0)
