"""extract_features: hooks, pooling, order, modes, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nodulebench.probing import extract_features


def _model() -> nn.Sequential:
    torch_gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_gen))
    return model


def _images(n: int = 10) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def test_matches_direct_forward_with_global_pooling() -> None:
    model, x = _model(), _images()
    feats = extract_features(
        model, TensorDataset(x, torch.arange(10)), ["0", "1", "3", ""], batch_size=3
    )
    with torch.no_grad():
        conv = model[0](x)
        expected_conv = conv.mean(dim=(2, 3))
        expected_relu = conv.relu().mean(dim=(2, 3))
        logits = model(x)
    torch.testing.assert_close(feats["0"], expected_conv)
    torch.testing.assert_close(feats["1"], expected_relu)
    torch.testing.assert_close(feats["3"], logits)
    torch.testing.assert_close(feats[""], logits)
    assert list(feats) == ["0", "1", "3", ""]


def test_accepts_ordered_loader_and_single_name_and_restores_modes() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5), nn.Flatten())
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    x = _images(7)
    loader = DataLoader(TensorDataset(x), batch_size=2, shuffle=False)
    feats = extract_features(model, loader, "2")
    assert feats["2"].shape == (7, 2 * 4 * 4)
    # Dropout would make the rows random in train mode; eval mode makes them exact.
    with torch.no_grad():
        torch.testing.assert_close(feats["2"], model[0](x).flatten(1))
    assert model.training and model[0].training and not model[1].training


def test_one_dimensional_output_becomes_a_column() -> None:
    class Scalar(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).sum(dim=1)

    model = nn.Sequential(Scalar())
    x = _images(4)
    feats = extract_features(model, TensorDataset(x), "0")
    torch.testing.assert_close(feats["0"], x.flatten(1).sum(dim=1, keepdim=True))


def test_no_gradient_is_recorded() -> None:
    model, x = _model(), _images(4)
    feats = extract_features(model, TensorDataset(x), ["3"])
    assert not feats["3"].requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_unknown_layer_names_the_argument_and_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"layers: 'fc' is not a module.*'0', '1'"):
        extract_features(_model(), TensorDataset(_images()), ["fc"])


@pytest.mark.parametrize(
    ("layers", "exc", "fragment"),
    [
        ([], ValueError, "at least one module"),
        (["0", "0"], ValueError, "repeat"),
        ([3], TypeError, "layers must be strings"),
    ],
)
def test_bad_layers(layers, exc, fragment) -> None:
    with pytest.raises(exc, match=fragment):
        extract_features(_model(), TensorDataset(_images()), layers)


def test_empty_data_raises() -> None:
    with pytest.raises(ValueError, match="data must contain at least one sample"):
        extract_features(_model(), TensorDataset(torch.zeros(0, 1, 6, 6)), "0")


def test_shuffling_loader_and_wrong_types_raise() -> None:
    loader = DataLoader(TensorDataset(_images()), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="data must iterate in dataset order"):
        extract_features(_model(), loader, "0")
    with pytest.raises(TypeError, match="data must be a torch Dataset or DataLoader; got list"):
        extract_features(_model(), [_images()], "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        extract_features(lambda x: x, TensorDataset(_images()), "0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1; got 0"):
        extract_features(_model(), TensorDataset(_images()), "0", batch_size=0)


def test_layer_not_called_raises() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Identity()
            self.unused = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(ValueError, match="'unused' was not called"):
        extract_features(Skips(), TensorDataset(_images()), ["unused"])


def test_synthetic_nodules_fast_path_matches_item_access() -> None:
    from nodulebench import SyntheticNodules

    data = SyntheticNodules(n=5, seed=3, image_size=16)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    fast = extract_features(model, data, "1", batch_size=2)
    slow = extract_features(model, DataLoader(data, batch_size=2), "1")
    torch.testing.assert_close(fast["1"], slow["1"])
    assert fast["1"].shape == (5, 2)
