"""Regenerate the figures of the data guide (docs/data.rst) into docs/_static/.

Run from the repository root: ``PYTHONPATH=src python docs/_scripts/make_data_figures.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402
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
    ("calcification", ["absent", "central", "laminated", "popcorn", "diffuse"]),
    ("offset_x_mm", [-9, -6, -3, 0, 3, 6, 9]),
    ("offset_y_mm", [-9, -6, -3, 0, 3, 6, 9]),
    ("background_hu", [-950, -900, -860, -820, -780, -740, -700]),
    ("background_texture_hu", [0, 10, 20, 30, 45, 60, 80]),
    ("vessels", ["none", "few", "many"]),
    ("noise_hu", [0, 10, 20, 40, 60, 100, 150]),
    ("blur_mm", [0.0, 0.3, 0.6, 0.9, 1.2, 1.6, 2.0]),
    ("pixel_spacing_mm", [0.46, 0.55, 0.63, 0.72, 0.8, 0.89, 0.98]),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = SyntheticNodules(NoduleSpec(), n=16, seed=7)
    plot_traversals(ds, 3, TRAVERSALS, path=OUT / "data_traversals.png")
    plt.close("all")
    small = SyntheticNodules(NoduleSpec(), n=16, seed=7, image_size=32)
    plot_traversals(small, 3, [TRAVERSALS[4], TRAVERSALS[0], TRAVERSALS[8]],
                    path=OUT / "data_traversals_32px.png")
    plt.close("all")

    train = NoduleSpec().with_shortcut("diameter_mm", 0.9)
    for name, spec in {"train": train, **train.test_distributions()}.items():
        seed = 0 if name == "train" else 1
        shown = SyntheticNodules(spec, n=64, seed=seed)
        plot_sample_grid(shown, by="label", per_group=6, path=OUT / f"data_dist_{name}.png",
                         title=spec.describe().replace("; ", "\n"))
        plt.close("all")
    calc = NoduleSpec().with_shortcut("calcification", 1.0)
    plot_sample_grid(SyntheticNodules(calc, n=64, seed=0), by="label", per_group=8,
                     path=OUT / "data_calcification_shortcut.png")
    plt.close("all")


if __name__ == "__main__":
    main()
