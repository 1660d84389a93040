"""Figures for probing results (matplotlib, from the ``plot`` extra).

matplotlib is imported inside each function, so ``import nodulebench`` never loads it, and
the user's backend is never changed. Every function draws into a given axes (or a new
figure) and returns what it drew on. :mod:`nodulebench.plotting` re-exports them beside the
data figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nodulebench._optional import import_pyplot
from nodulebench._validation import check_choice, check_ndim
from nodulebench.probing.records import ProbeResult, SensitivityResult

__all__ = [
    "plot_embedding_scatter",
    "plot_gradcam_overlays",
    "plot_probe_heatmap",
    "plot_sensitivity_bars",
]


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    return import_pyplot().subplots(figsize=figsize, layout="constrained")[1]


def plot_probe_heatmap(
    results: Mapping[str, Sequence[ProbeResult]],
    *,
    value: str = "selectivity",
    ax: Any = None,
) -> Any:
    """Heatmap of probe results: one row per model, one column per factor.

    Args:
        results: ``{model name: probe results}``; each list holds one result per factor
            (e.g. of one layer). Columns follow the first appearance of each factor.
        value: Which field to show: ``"selectivity"``, ``"score"`` or ``"control"``.
        ax: A matplotlib axes to draw on; default a new figure.

    Returns:
        The matplotlib axes.

    Raises:
        ValueError: If ``results`` is empty, ``value`` is unknown, or a model lists a
            factor twice.
    """
    check_choice("value", value, ("selectivity", "score", "control"))
    if not results:
        raise ValueError("results must hold at least one model; got an empty mapping")
    factors: dict[str, None] = {}
    for records in results.values():
        factors.update(dict.fromkeys(r.factor for r in records))
    columns = list(factors)
    grid = torch.full((len(results), len(columns)), float("nan"), dtype=torch.float64)
    for row, (model, records) in enumerate(results.items()):
        seen = set()
        for record in records:
            if record.factor in seen:
                raise ValueError(
                    f"results[{model!r}] lists factor {record.factor!r} twice; "
                    "pass one layer's results per model"
                )
            seen.add(record.factor)
            grid[row, columns.index(record.factor)] = getattr(record, value)
    ax = _axes(ax, (1.0 + 0.9 * len(columns), 1.0 + 0.5 * len(results)))
    lowest = min(0.0, float(grid.nan_to_num(0.0).min()))
    image = ax.imshow(grid.numpy(), cmap="viridis", vmin=lowest, vmax=1.0, aspect="auto")
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            cell = float(grid[row, col])
            if not math.isnan(cell):  # NaN: this model has no result for this factor
                ax.text(
                    col,
                    row,
                    f"{cell:.2f}",
                    ha="center",
                    va="center",
                    color="white" if cell < 0.6 else "black",
                    fontsize=8,
                )
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
    ax.set_yticks(range(len(results)), list(results))
    ax.figure.colorbar(image, ax=ax, label=value)
    return ax


def plot_sensitivity_bars(
    results: Mapping[str, Sequence[SensitivityResult]],
    *,
    metric: str = "mean_abs_probability_change",
    ax: Any = None,
) -> Any:
    """Grouped bars of intervention sensitivity: factors on the x axis, one bar per model.

    Args:
        results: ``{model name: sensitivity results}``.
        metric: ``"mean_abs_probability_change"``, ``"flip_rate"`` or
            ``"relative_embedding_displacement"``.
        ax: A matplotlib axes to draw on; default a new figure.

    Returns:
        The matplotlib axes.

    Raises:
        ValueError: If ``results`` is empty, ``metric`` is unknown, or a model lacks the
            metric (no embedding layer was measured).
    """
    check_choice(
        "metric",
        metric,
        ("mean_abs_probability_change", "flip_rate", "relative_embedding_displacement"),
    )
    if not results:
        raise ValueError("results must hold at least one model; got an empty mapping")
    factors: dict[str, None] = {}
    for records in results.values():
        factors.update(dict.fromkeys(r.factor for r in records))
    columns = list(factors)
    ax = _axes(ax, (1.5 + 0.8 * len(columns), 3.0))
    width = 0.8 / len(results)
    for k, (model, records) in enumerate(results.items()):
        heights = [0.0] * len(columns)
        for record in records:
            height = getattr(record, metric)
            if height is None:
                raise ValueError(
                    f"results[{model!r}] has no {metric} for {record.factor!r}; "
                    "measure it with embedding_layer=..."
                )
            heights[columns.index(record.factor)] = height
        offsets = [c - 0.4 + width * (k + 0.5) for c in range(len(columns))]
        ax.bar(offsets, heights, width=width, label=model)
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
    ax.set_ylabel(_SENSITIVITY_LABELS[metric])
    ax.legend(frameon=False)
    return ax


_SENSITIVITY_LABELS = {
    "mean_abs_probability_change": "mean change of P(malignant)\nwhen only this factor moves",
    "flip_rate": "share of predictions that flip\nwhen only this factor moves",
    "relative_embedding_displacement": (
        "embedding shift when only this\nfactor moves / embedding spread"
    ),
}


def plot_embedding_scatter(
    coordinates: torch.Tensor,
    colour_by: torch.Tensor,
    *,
    label: str = "",
    ax: Any = None,
) -> Any:
    """Scatter of 2-D coordinates (e.g. from :func:`~nodulebench.probing.project_embeddings`).

    Args:
        coordinates: ``(N, 2)`` points.
        colour_by: ``(N,)`` values of a factor: a colour bar for floating values, a legend
            of codes for integer ones.
        label: Name of the factor, for the colour bar or legend title.
        ax: A matplotlib axes to draw on; default a new figure.

    Returns:
        The matplotlib axes.
    """
    check_ndim("coordinates", coordinates, (2,), "(N, 2)")
    check_ndim("colour_by", colour_by, (1,), "(N,)")
    if coordinates.shape[1] != 2 or colour_by.shape[0] != coordinates.shape[0]:
        raise ValueError(
            f"coordinates must be (N, 2) and colour_by (N,); got {tuple(coordinates.shape)} "
            f"and {tuple(colour_by.shape)}"
        )
    ax = _axes(ax, (4.0, 3.5))
    points = coordinates.detach().cpu().double().numpy()
    values = colour_by.detach().cpu()
    if values.is_floating_point():
        drawn = ax.scatter(
            points[:, 0], points[:, 1], c=values.double().numpy(), s=8, cmap="viridis"
        )
        ax.figure.colorbar(drawn, ax=ax, label=label)
    else:
        for code in torch.unique(values).tolist():
            chosen = (values == code).numpy()
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, label=str(code))
        ax.legend(title=label, frameon=False, fontsize=8)
    ax.set_xlabel("first projected axis")
    ax.set_ylabel("second projected axis")
    return ax


def plot_gradcam_overlays(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    titles: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Any:
    """Grad-CAM maps over the images, optionally with a mask's contour, one panel each.

    Each map is scaled by its own maximum for display; values below 5 % of it are left
    transparent.

    Args:
        images: ``(N, 1, H, W)`` images.
        maps: ``(N, 1, H, W)`` non-negative maps (e.g. from
            :func:`~nodulebench.probing.grad_cam`).
        masks: Optional ``(N, 1, H, W)`` bool masks whose contour is drawn (e.g. the
            nodule or spicule mask).
        titles: Optional one title per panel.
        alpha: Opacity of the map over the image.

    Returns:
        The matplotlib figure.
    """
    check_ndim("images", images, (4,), "(N, 1, H, W)")
    check_ndim("maps", maps, (4,), "(N, 1, H, W)")
    if maps.shape != images.shape or images.shape[1] != 1:
        raise ValueError(
            f"images and maps must both be (N, 1, H, W) of one shape; got "
            f"{tuple(images.shape)} and {tuple(maps.shape)}"
        )
    if masks is not None and masks.shape != images.shape:
        raise ValueError(f"masks must have shape {tuple(images.shape)}; got {tuple(masks.shape)}")
    if titles is not None and len(titles) != images.shape[0]:
        raise ValueError(f"titles must hold {images.shape[0]} strings; got {len(titles)}")
    plt = import_pyplot()
    count = images.shape[0]
    figure, axes = plt.subplots(
        1, count, figsize=(2.0 * count, 2.2), squeeze=False, layout="constrained"
    )
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i, 0].detach().cpu().numpy(), cmap="gray")
        heat = maps[i, 0].detach().cpu().double()
        peak = float(heat.max())
        scaled = (heat / peak if peak > 0 else heat).numpy()
        # Near-zero attribution stays transparent so the image shows through.
        ax.imshow(np.ma.masked_less(scaled, 0.05), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        if masks is not None and bool(masks[i, 0].any()):
            ax.contour(
                masks[i, 0].detach().cpu().double().numpy(),
                levels=[0.5],
                colors="white",
                linewidths=0.8,
            )
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        ax.set_axis_off()
    return figure
