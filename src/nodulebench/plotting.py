"""Figures, in one place: data figures here, probing figures re-exported.

matplotlib (the ``plot`` extra) is imported inside the functions, so importing this module
never loads it, and the user's matplotlib backend is never changed: a script without a
display chooses a headless backend itself (``matplotlib.use("Agg")`` or ``MPLBACKEND=Agg``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from ._optional import import_pyplot
from ._validation import check_positive
from .data.dataset import SyntheticNodules
from .data.factors import get_factor
from .probing.plotting import (
    plot_embedding_scatter,
    plot_gradcam_overlays,
    plot_probe_heatmap,
    plot_sensitivity_bars,
)

__all__ = [
    "plot_embedding_scatter",
    "plot_gradcam_overlays",
    "plot_probe_heatmap",
    "plot_sample_grid",
    "plot_sensitivity_bars",
    "plot_traversals",
]


def _groups(ds: SyntheticNodules, by: str, bins: int) -> list[tuple[str, torch.Tensor]]:
    """``(title, indices)`` per group of ``ds`` split by the label or a factor."""
    if by == "label":
        return [
            (name, torch.nonzero(ds.labels == c).flatten())
            for c, name in ((0, "benign"), (1, "malignant"))
        ]
    info = get_factor(by, argument="by")
    values = ds.factors[by]
    if info.is_categorical:
        return [
            (name, torch.nonzero(values == c).flatten()) for c, name in enumerate(info.categories)
        ]
    edges = torch.quantile(values.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    which = torch.bucketize(values.double(), edges[1:-1], right=True)
    return [
        (
            f"{edges[b]:.3g}-{edges[b + 1]:.3g} {info.unit}".strip(),
            torch.nonzero(which == b).flatten(),
        )
        for b in range(bins)
    ]


def plot_sample_grid(
    dataset: SyntheticNodules,
    by: str = "label",
    per_group: int = 8,
    *,
    bins: int = 4,
    path: str | pathlib.Path | None = None,
    title: str | None = None,
) -> Any:
    """A grid of samples, one row per group of the label or of a factor.

    Args:
        dataset: the dataset to show (images are rendered in one batch).
        by: ``"label"``, a categorical factor (one row per category) or a continuous factor
            (``bins`` quantile bins).
        per_group: images per row (the first ones of each group, in index order).
        bins: number of bins of a continuous factor.
        path: save the figure there as PNG when given.
        title: figure title (default: the spec's one-line description).

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ValueError: unknown ``by`` or non-positive ``per_group`` / ``bins``.
        ImportError: matplotlib is not installed.
    """
    plt = import_pyplot()

    check_positive("per_group", per_group)
    check_positive("bins", bins)
    groups = _groups(dataset, by, int(bins))
    fig, axes = plt.subplots(
        len(groups),
        per_group,
        squeeze=False,
        figsize=(1.1 * per_group + 1.2, 1.15 * len(groups) + 0.4),
    )
    for row, (name, members) in enumerate(groups):
        chosen = members[:per_group]
        images = dataset.render(chosen) if chosen.numel() else torch.empty(0)
        for col in range(per_group):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < chosen.numel():
                _show(ax, images[col, 0], dataset.output)
        axes[row][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title if title is not None else dataset.spec.describe(), fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_traversals(
    dataset: SyntheticNodules,
    index: int,
    traversals: Sequence[tuple[str, Sequence[Any]]],
    *,
    path: str | pathlib.Path | None = None,
) -> Any:
    """One row per ``(factor, values)``: sample ``index`` re-rendered along that factor.

    Args:
        dataset: the dataset holding the sample.
        index: the sample whose exogenous noise is kept.
        traversals: ``(factor name, values)`` pairs; values are numbers or category names.
        path: save the figure there as PNG when given.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    plt = import_pyplot()

    cols = max(len(values) for _, values in traversals)
    fig, axes = plt.subplots(
        len(traversals), cols, squeeze=False, figsize=(1.1 * cols + 1.6, 1.2 * len(traversals))
    )
    for row, (factor, values) in enumerate(traversals):
        images = dataset.traverse(index, factor, list(values))
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(values):
                _show(ax, images[col, 0], dataset.output)
                v = values[col]
                ax.set_title(v if isinstance(v, str) else f"{v:g}", fontsize=7, pad=2)
        axes[row][0].set_ylabel(factor, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _show(ax: Any, image: torch.Tensor, output: str) -> None:
    if output == "window":
        ax.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image.numpy(), cmap="gray", vmin=-1000.0, vmax=400.0)
