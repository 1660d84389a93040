"""Make the figures and tables of the "Probing" guide page (docs/probing.rst).

Two small CNNs are trained with cross-entropy for a few hundred steps: one on a training
distribution where nodule size is a perfect shortcut for the label (the label itself
follows spiculation), one on the same distribution with the shortcut removed. Both are
then probed, intervened on and explained with Grad-CAM on a decorrelated test set.

Run from the repository root (about a minute on a 2-core CPU)::

    python docs/_scripts/make_probing_figures.py

It writes PNG and CSV files under ``docs/_static/probing/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402
from nodulebench.probing import (  # noqa: E402
    extract_features,
    grad_cam,
    intervention_sensitivity,
    mask_energy,
    plot_embedding_scatter,
    plot_gradcam_overlays,
    plot_probe_heatmap,
    plot_sensitivity_bars,
    probe_factors,
    project_embeddings,
    write_records,
)

OUT = Path(__file__).resolve().parents[1] / "_static" / "probing"
IMAGE_SIZE = 32
SHOWN_FACTORS = (
    "spiculation",
    "diameter_mm",
    "lobulation",
    "sphericity",
    "margin_sharpness",
    "texture",
    "calcification",
    "vessels",
    "noise_hu",
)


class SmallCNN(nn.Module):
    """Three 3 x 3 convolutions (the last two with stride 2), global average pooling, a head."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 2)
        with torch.no_grad():  # explicit generator: never the global RNG
            for p in self.parameters():
                if p.ndim > 1:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                else:
                    p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def train(spec: NoduleSpec, steps: int, seed: int) -> SmallCNN:
    data = SyntheticNodules(spec, n=1024, seed=seed, image_size=IMAGE_SIZE)
    images, labels = data.render(torch.arange(len(data))), data.labels
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.randint(0, len(data), (64,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, data: SyntheticNodules) -> float:
    with torch.no_grad():
        predicted = model(data.render(torch.arange(len(data)))).argmax(dim=1)
    return float((predicted == data.labels).double().mean())


def rounded(model: str, record: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """One table row: the model's name and the chosen fields, floats to 3 decimals."""
    fields = record.to_dict()
    return {
        "model": model,
        **{
            key: round(fields[key], 3) if isinstance(fields[key], float) else fields[key]
            for key in keys
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    def lap(what: str) -> None:
        print(f"{time.perf_counter() - start:6.1f} s  {what}", flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    train_spec = NoduleSpec().with_shortcut("diameter_mm", 1.0)
    models = {
        "size shortcut": train(train_spec, args.steps, seed=1),
        "no shortcut": train(train_spec.decorrelated(), args.steps, seed=2),
    }
    lap("trained")
    test = SyntheticNodules(train_spec.decorrelated(), n=400, seed=99, image_size=IMAGE_SIZE)
    factors = {name: test.factors[name] for name in SHOWN_FACTORS}

    probes, sensitivities, summary = {}, {}, []
    for name, model in models.items():
        features = extract_features(model, test, "pool")
        probes[name] = probe_factors(features, factors, folds=5, seed=0)
        sensitivities[name] = intervention_sensitivity(
            model,
            test,
            factors=list(SHOWN_FACTORS),
            n=128,
            seed=0,
            embedding_layer="pool",
            values={"calcification": [0, 1]},  # absent vs central, not all 10 pairs
        )
        summary.append(
            {"model": name, "decorrelated test accuracy": round(accuracy(model, test), 3)}
        )
    lap("probed and intervened")
    write_records(
        [
            rounded(m, r, ("factor", "metric", "score", "control", "selectivity"))
            for m, rs in probes.items()
            for r in rs
        ],
        OUT / "probe_table.csv",
    )
    write_records(
        [
            rounded(
                m,
                r,
                (
                    "factor",
                    "flip_rate",
                    "mean_abs_probability_change",
                    "relative_embedding_displacement",
                ),
            )
            for m, rs in sensitivities.items()
            for r in rs
        ],
        OUT / "sensitivity_table.csv",
    )
    write_records(summary, OUT / "accuracy.csv")

    ax = plot_probe_heatmap(probes, value="selectivity")
    ax.set_title("probe selectivity (score - shuffled control)")
    ax.figure.savefig(OUT / "probe_heatmap.png", dpi=110)
    ax = plot_sensitivity_bars(sensitivities, metric="mean_abs_probability_change")
    ax.set_title("counterfactual change of p(malignant)")
    ax.figure.savefig(OUT / "sensitivity_bars.png", dpi=110)

    features = extract_features(models["size shortcut"], test, "pool")["pool"]
    projection = project_embeddings(features, dim=2)
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    plot_embedding_scatter(
        projection.coordinates, test.factors["diameter_mm"], label="diameter_mm", ax=axes[0]
    )
    plot_embedding_scatter(projection.coordinates, test.labels, label="label", ax=axes[1])
    figure.suptitle("size-shortcut model: embedding PCA")
    figure.savefig(OUT / "embedding_scatter.png", dpi=110)

    # Grad-CAM on small malignant (spiculated) nodules: the shortcut says "benign".
    chosen = torch.nonzero((test.labels == 1) & (test.factors["diameter_mm"] < 10)).flatten()[:5]
    images, masks = test.render(chosen, return_masks=True)
    for name, model in models.items():
        maps = grad_cam(model, "features.3", images, target=1)
        shares = mask_energy(maps, masks)
        with torch.no_grad():
            p = torch.softmax(model(images), dim=1)[:, 1]
        titles = [
            f"p={float(p[i]):.2f} spic.={float(shares['spicules'][i]):.2f}"
            for i in range(len(chosen))
        ]
        figure = plot_gradcam_overlays(images, maps, masks["nodule"], titles=titles)
        figure.suptitle(f"Grad-CAM, {name}", fontsize=9)
        slug = name.replace(" ", "_")
        figure.savefig(OUT / f"gradcam_{slug}.png", dpi=110)
    plt.close("all")
    print(f"wrote {OUT} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
