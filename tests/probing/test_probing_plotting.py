"""Plotting helpers draw what they are given (matplotlib, Agg backend)."""

from __future__ import annotations

import pytest
import torch

from nodulebench.probing import (
    ProbeResult,
    SensitivityResult,
    plot_embedding_scatter,
    plot_gradcam_overlays,
    plot_probe_heatmap,
    plot_sensitivity_bars,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _probe(factor: str, score: float) -> ProbeResult:
    return ProbeResult("fc", factor, "continuous", "r2", score, 0.0, 0.0, 0.0, score, 0.0, 10, 2)


def _sensitivity(factor: str, change: float) -> SensitivityResult:
    return SensitivityResult(
        factor, "continuous", (1.0, 2.0), "percentiles", 8, 1, change, change, change, None, None
    )


def test_probe_heatmap_cells_and_missing_factor() -> None:
    ax = plot_probe_heatmap(
        {"ce": [_probe("size", 0.9), _probe("spic", 0.1)], "supcon": [_probe("spic", 0.8)]}
    )
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.10", "0.80", "0.90"]  # the missing cell stays blank
    assert [t.get_text() for t in ax.get_xticklabels()] == ["size", "spic"]
    with pytest.raises(ValueError, match="lists factor 'size' twice"):
        plot_probe_heatmap({"ce": [_probe("size", 0.1), _probe("size", 0.2)]})
    with pytest.raises(ValueError, match="value must be one of"):
        plot_probe_heatmap({"ce": [_probe("size", 0.1)]}, value="r2")


def test_sensitivity_bars_heights() -> None:
    ax = plot_sensitivity_bars(
        {
            "a": [_sensitivity("size", 0.3), _sensitivity("spic", 0.1)],
            "b": [_sensitivity("spic", 0.5)],
        },
        metric="flip_rate",
    )
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [0.3, 0.1, 0.0, 0.5]
    with pytest.raises(ValueError, match="no relative_embedding_displacement"):
        plot_sensitivity_bars(
            {"a": [_sensitivity("size", 0.3)]}, metric="relative_embedding_displacement"
        )


def test_embedding_scatter_continuous_and_categorical() -> None:
    xy = torch.rand(20, 2)
    ax = plot_embedding_scatter(xy, torch.rand(20), label="size")
    assert len(ax.collections) == 1
    ax = plot_embedding_scatter(xy, torch.arange(20) % 3, label="calc")
    assert len(ax.collections) == 3
    with pytest.raises(ValueError, match="coordinates must be"):
        plot_embedding_scatter(torch.rand(20, 3), torch.rand(20))


def test_gradcam_overlays_panels_and_contours() -> None:
    images, maps = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    masks = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 2:5, 2:5] = True
    figure = plot_gradcam_overlays(images, maps, masks, titles=["a", "b", "c"])
    assert len(figure.axes) == 3
    assert [ax.get_title() for ax in figure.axes] == ["a", "b", "c"]
    assert all(len(ax.images) == 2 for ax in figure.axes)
    with pytest.raises(ValueError, match="titles must hold 3 strings"):
        plot_gradcam_overlays(images, maps, titles=["a"])
