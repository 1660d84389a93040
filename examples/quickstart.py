"""Quickstart: a shortcut dataset, a SupCon-trained encoder, a linear head, probes.

The training set labels nodules malignant when they are spiculated, and ties nodule size
to the label for 95 % of each class (a shortcut). A small CNN is trained with SupCon, a
linear head is fitted on its frozen features, and the model is tested on shifted
distributions and probed: which factors can be read from its features, and which change
its output.

    python examples/quickstart.py --out quickstart        # a few minutes on a laptop CPU
    python examples/quickstart.py --tiny --out /tmp/qs    # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

# [imports]
import matplotlib
import torch
from torch import nn
from torch.nn import functional as F

from nodulebench import NoduleSpec, SupConLoss, SyntheticNodules
from nodulebench.models import small_cnn
from nodulebench.plotting import plot_probe_heatmap, plot_sample_grid, plot_sensitivity_bars
from nodulebench.probing import extract_features, intervention_sensitivity, probe_factors
from nodulebench.threads import set_threads

# [/imports]

# [sizes]
SIZES = {  # full: what the docs show; tiny: what the tests run
    "full": {"n_train": 4096, "n_test": 1000, "epochs": 16, "interventions": 256},
    "tiny": {"n_train": 128, "n_test": 64, "epochs": 1, "interventions": 16},
}
# [/sizes]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart"), help="output folder")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    return parser.parse_args()


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random horizontal and vertical flip per image: the label depends on neither."""
    for dim in (-1, -2):
        flip = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(dim), images)
    return images


def main() -> None:
    args = parse_args()
    size = SIZES["tiny" if args.tiny else "full"]
    args.out.mkdir(parents=True, exist_ok=True)
    # [setup]
    set_threads(args.threads)  # CPU threads of torch and BLAS; the default: what we may use
    matplotlib.use("Agg")  # figures to files; nodulebench never changes the backend itself
    torch.manual_seed(0)  # the model's initial weights; nodulebench never touches this RNG
    generator = torch.Generator().manual_seed(0)  # batches and augmentation
    # [/setup]

    # [data]
    spec = NoduleSpec().with_shortcut("diameter_mm", 0.9)
    print(spec.describe())
    train = SyntheticNodules(spec, n=size["n_train"], seed=0, image_size=32)
    tests = {
        name: SyntheticNodules(test_spec, n=size["n_test"], seed=1, image_size=32)
        for name, test_spec in spec.test_distributions().items()
    }
    plot_sample_grid(train, by="label", per_group=8, path=args.out / "train_by_label.png")
    plot_sample_grid(
        train, by="diameter_mm", per_group=8, bins=3, path=args.out / "train_by_diameter.png"
    )
    # [/data]

    # [train]
    encoder = small_cnn()  # three convolutions with batch norm: (N, 64) features
    projection = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    criterion = SupConLoss(temperature=0.1)
    parameters = list(encoder.parameters()) + list(projection.parameters())
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    images = train.render(range(len(train)))  # (N, 1, 32, 32) in [0, 1]
    for epoch in range(size["epochs"]):
        for batch in torch.randperm(len(train), generator=generator).split(256):
            views = torch.stack([augment(images[batch], generator) for _ in range(2)], dim=1)
            embeddings = projection(encoder(views.flatten(0, 1)))  # (2b, 32)
            loss = criterion(embeddings.unflatten(0, (len(batch), 2)), train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: SupCon loss {loss.item():.3f}")
    # [/train]

    # [head]
    encoder.eval()
    with torch.no_grad():
        features = encoder(images)
    head = nn.Linear(64, 2)
    head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):  # full batch on frozen features
        head_loss = F.cross_entropy(head(features), train.labels)
        head_optimizer.zero_grad()
        head_loss.backward()
        head_optimizer.step()
    model = nn.Sequential()
    model.add_module("encoder", encoder)
    model.add_module("head", head)
    model.eval()
    for name, test in tests.items():
        with torch.no_grad():
            predicted = model(test.render(range(len(test)))).argmax(dim=1)
        accuracy = (predicted == test.labels).double().mean().item()
        print(f"accuracy on {name:<13} {accuracy:.3f}")
    # [/head]

    # [probe]
    probe_set = tests["decorrelated"]  # size no longer tells the label here
    factors = ["spiculation", "diameter_mm", "lobulation", "margin_sharpness", "texture"]
    probes = probe_factors(
        extract_features(model, probe_set, "encoder"),
        {name: probe_set.factors[name] for name in factors},
        folds=3,
    )
    used = intervention_sensitivity(model, probe_set, factors=factors, n=size["interventions"])
    for probe, effect in zip(probes, used, strict=True):
        print(
            f"{probe.factor:<17} decodable: {probe.metric} {probe.score:.2f} "
            f"(shuffled {probe.control:.2f})   used: p(malignant) moves "
            f"{effect.mean_abs_probability_change:.3f}"
        )
    ax = plot_probe_heatmap({"SupCon + linear head": probes})
    ax.figure.savefig(args.out / "probes.png", dpi=100)
    ax = plot_sensitivity_bars({"SupCon + linear head": used})
    ax.figure.savefig(args.out / "interventions.png", dpi=100)
    # [/probe]


if __name__ == "__main__":
    main()
