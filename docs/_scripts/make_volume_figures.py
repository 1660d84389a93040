"""Regenerate the volume figures of the data guide (docs/data.rst) into docs/_static/.

Run from the repository root: ``PYTHONPATH=src python docs/_scripts/make_volume_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_static"
SIZE = 64
VIEWS = ("axial", "coronal", "sagittal")


def _views(volume: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Central axial, coronal and sagittal slices of a ``(D, H, W)`` volume, z upwards."""
    c = volume.shape[0] // 2
    return volume[c], volume[:, c].flip(0), volume[:, :, c].flip(0)


def _coronal_slab(volume: torch.Tensor, half: int = 6) -> torch.Tensor:
    """Maximum-intensity projection of a coronal slab of ``2 half + 1`` slices, z upwards."""
    c = volume.shape[1] // 2
    return volume[:, c - half : c + half + 1].amax(1).flip(0)


def _show(ax: plt.Axes, image: torch.Tensor) -> None:
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def orthogonal_slices(ds: SyntheticNodules, path: Path) -> None:
    """Six nodules (columns) in their three central orthogonal slices (rows)."""
    cases = [
        ("spiculated", {"spiculation": 0.95, "lobulation": 0.2}),
        ("lobulated", {"spiculation": 0.1, "lobulation": 0.9}),
        ("juxta-pleural", {"location": "juxta-pleural", "spiculation": 0.7}),
        ("juxta-vascular", {"location": "juxta-vascular", "vessels": "many"}),
        ("part-solid", {"texture": "part-solid", "calcification": "absent"}),
        ("popcorn", {"calcification": "popcorn", "texture": "solid"}),
    ]
    fig, axes = plt.subplots(3, len(cases), figsize=(1.7 * len(cases), 5.4))
    for col, (title, change) in enumerate(cases):
        volume = ds.intervene(col, **change)[0]
        for row, view in enumerate(_views(volume)):
            ax = axes[row, col]
            _show(ax, view)
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(VIEWS[row])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def traversal(ds: SyntheticNodules, index: int, path: Path) -> None:
    """One nodule along spiculation, diameter and slice thickness: axial slice, coronal slab."""
    rows = [
        ("spiculation", [0.0, 0.3, 0.45, 0.6, 0.8, 1.0]),
        ("diameter_mm", [5, 8, 11, 14, 18, 24]),
        ("slice_thickness_mm", [0.5, 1.0, 1.5, 2.5, 3.5, 5.0]),
    ]
    fig, axes = plt.subplots(2 * len(rows), 6, figsize=(10.2, 2 * 1.75 * len(rows)))
    for r, (factor, values) in enumerate(rows):
        volumes = ds.traverse(index, factor, values)
        for col, value in enumerate(values):
            axial = _views(volumes[col, 0])[0]
            slab = _coronal_slab(volumes[col, 0])
            for k, (view, image) in enumerate((("axial", axial), ("coronal MIP", slab))):
                ax = axes[2 * r + k, col]
                _show(ax, image)
                if k == 0:
                    ax.set_title(f"{factor} = {value}", fontsize=8)
                if col == 0:
                    ax.set_ylabel(view)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = SyntheticNodules(NoduleSpec(), n=16, seed=7, volume_size=SIZE)
    orthogonal_slices(ds, OUT / "data_volume_slices.png")
    plt.close("all")
    f = ds.factors
    # a plain nodule shows every change: solid, uncalcified, isolated, no fissure, no vessel
    plain = (
        (f["texture"] == 0)
        & (f["calcification"] == 0)
        & (f["location"] == 0)
        & (f["fissure"] == 0)
        & (f["vessels"] == 0)
    )
    traversal(ds, int(plain.nonzero()[0]), OUT / "data_volume_traversal.png")
    plt.close("all")


if __name__ == "__main__":
    main()
