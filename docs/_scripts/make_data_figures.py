"""Regenerate the figures of the data guide (docs/data.rst) into docs/_static/.

Run from the repository root: ``PYTHONPATH=src python docs/_scripts/make_data_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402
from nodulebench.data import Fixed  # noqa: E402
from nodulebench.plotting import plot_sample_grid, plot_traversals  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_static"

TRAVERSALS = [
    ("diameter_mm", [4, 7, 10, 14, 18, 24, 30]),
    ("sphericity", [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    ("orientation_deg", [0, 30, 60, 90, 120, 150, 180]),
    ("lobulation", [0.0, 0.17, 0.33, 0.5, 0.67, 0.83, 1.0]),
    ("spiculation", [0.0, 0.17, 0.33, 0.5, 0.67, 0.83, 1.0]),
    ("margin_sharpness", [0.0, 0.17, 0.33, 0.5, 0.67, 0.83, 1.0]),
    ("texture", ["solid", "part-solid", "ground-glass"]),
    ("attenuation_hu", [-750, -600, -450, -300, -150, 0, 100]),
    (
        "calcification",
        ["absent", "central", "laminated", "popcorn", "diffuse", "eccentric", "stippled"],
    ),
    ("calcification_hu", [150, 250, 400, 550, 700, 850, 1000]),
    ("offset_x_mm", [-9, -6, -3, 0, 3, 6, 9]),
    ("offset_y_mm", [-9, -6, -3, 0, 3, 6, 9]),
    ("background_hu", [-950, -900, -860, -820, -780, -740, -700]),
    ("background_texture_hu", [0, 10, 20, 30, 45, 60, 80]),
    ("vessels", ["none", "few", "many"]),
    ("location", ["isolated", "juxta-vascular", "juxta-pleural"]),
    ("fissure", ["absent", "present"]),
    ("site", ["scanner_a", "scanner_b", "scanner_c", "scanner_d"]),
    ("kernel", ["smooth", "standard", "sharp"]),
    ("noise_hu", [0, 10, 20, 40, 60, 100, 150]),
    ("blur_mm", [0.0, 0.3, 0.6, 0.9, 1.2, 1.6, 2.0]),
    ("pixel_spacing_mm", [0.46, 0.55, 0.63, 0.72, 0.8, 0.89, 0.98]),
]


def resolutions(path: Path) -> None:
    """The same default samples at 32, 64 and 128 pixels (one row per size)."""
    indices = list(range(8))
    fig, axes = plt.subplots(3, len(indices), figsize=(1.6 * len(indices), 5.2))
    for row, size in enumerate((32, 64, 128)):
        ds = SyntheticNodules(NoduleSpec(), n=16, seed=11, image_size=size)
        images = ds.render(indices)
        for col, k in enumerate(indices):
            ax = axes[row, col]
            ax.imshow(images[col, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{size} px")
            if row == 0:
                label = "M" if int(ds.labels[k]) else "B"
                ax.set_title(f"#{k} {label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = SyntheticNodules(NoduleSpec(), n=16, seed=7)
    f = ds.factors
    # a plain nodule shows every change: solid, uncalcified, isolated, no fissure
    plain = (
        (f["texture"] == 0) & (f["calcification"] == 0) & (f["location"] == 0) & (f["fissure"] == 0)
    )
    index = int(plain.nonzero()[0])
    plot_traversals(ds, index, TRAVERSALS, path=OUT / "data_traversals.png")
    plt.close("all")
    by_name = dict(TRAVERSALS)
    calcified = SyntheticNodules(
        NoduleSpec(marginals={"calcification": Fixed("laminated"), "texture": Fixed("solid")}),
        n=16,
        seed=7,
    )
    plot_traversals(
        calcified,
        index,
        [("calcification_hu", by_name["calcification_hu"])],
        path=OUT / "data_traversals_calcification_hu.png",
    )
    plt.close("all")
    small = SyntheticNodules(NoduleSpec(), n=16, seed=7, image_size=32)
    plot_traversals(
        small,
        index,
        [(name, by_name[name]) for name in ("spiculation", "diameter_mm", "calcification")],
        path=OUT / "data_traversals_32px.png",
    )
    plt.close("all")
    resolutions(OUT / "data_resolutions.png")
    plt.close("all")
    # noise and kernel are easier to judge on a quiet nodule
    quiet = SyntheticNodules(
        NoduleSpec(marginals={"vessels": Fixed("none"), "location": Fixed("isolated")}),
        n=16,
        seed=7,
    )
    plot_traversals(
        quiet,
        index,
        [(name, by_name[name]) for name in ("site", "kernel", "noise_hu")],
        path=OUT / "data_traversals_acquisition.png",
    )
    plt.close("all")

    train = NoduleSpec().with_shortcut("diameter_mm", 0.9)
    for name, spec in {"train": train, **train.test_distributions()}.items():
        seed = 0 if name == "train" else 1
        shown = SyntheticNodules(spec, n=64, seed=seed)
        plot_sample_grid(
            shown,
            by="label",
            per_group=6,
            path=OUT / f"data_dist_{name}.png",
            title=spec.describe().replace("; ", "\n"),
        )
        plt.close("all")
    calc = NoduleSpec().with_shortcut("calcification", 1.0)
    plot_sample_grid(
        SyntheticNodules(calc, n=64, seed=0),
        by="label",
        per_group=8,
        path=OUT / "data_calcification_shortcut.png",
    )
    plt.close("all")
    site = NoduleSpec().with_shortcut("site", 1.0)
    plot_sample_grid(
        SyntheticNodules(site, n=64, seed=0),
        by="label",
        per_group=8,
        path=OUT / "data_site_shortcut.png",
        title="site shortcut, strength 1: benign from scanners A/B, malignant from C/D",
    )
    plt.close("all")
    screening = NoduleSpec.screening()
    plot_sample_grid(
        SyntheticNodules(screening, n=64, seed=0),
        by="label",
        per_group=8,
        path=OUT / "data_screening.png",
        title=screening.describe().replace("; ", "\n"),
    )
    plt.close("all")


if __name__ == "__main__":
    main()
