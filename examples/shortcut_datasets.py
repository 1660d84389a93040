"""Shortcut datasets and their test distributions, drawn as factor scatter plots.

The label follows spiculation (malignant iff ``spiculation > 0.5``); a training spec ties
nodule size to the label with strength 0.9. Each test distribution changes that tie (or
the acquisition) in a controlled way. One panel per distribution: spiculation against
diameter, coloured by label, with the agreement between the shortcut and the label.

    python examples/shortcut_datasets.py --out shortcut-datasets
    python examples/shortcut_datasets.py --tiny --out /tmp/shortcuts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a headless backend, chosen by the script (the library never does)
import matplotlib.pyplot as plt  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402
from nodulebench.plotting import plot_sample_grid  # noqa: E402
from nodulebench.threads import set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("shortcut-datasets"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    n = 64 if args.tiny else 1000

    spec = NoduleSpec().with_shortcut("diameter_mm", 0.9, threshold=12.0)
    distributions = {"train": spec, **spec.test_distributions()}
    figure, axes = plt.subplots(
        1,
        len(distributions),
        figsize=(2.6 * len(distributions), 2.8),
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    agreement = {}
    for ax, (name, dist_spec) in zip(axes, distributions.items(), strict=True):
        data = SyntheticNodules(dist_spec, n=n, seed=0, image_size=32)
        large = data.factors["diameter_mm"] > 12.0
        agreement[name] = round(float((large == data.labels.bool()).double().mean()), 3)
        for label, colour in ((0, "tab:blue"), (1, "tab:red")):
            chosen = data.labels == label
            ax.scatter(
                data.factors["diameter_mm"][chosen],
                data.factors["spiculation"][chosen],
                s=4,
                c=colour,
                label=("benign", "malignant")[label],
            )
        ax.axvline(12.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}\nsize agrees with label: {agreement[name]:.0%}", fontsize=8)
        ax.set_xlabel("diameter_mm")
        print(f"{name:<13} {dist_spec.describe()}")
    axes[0].set_ylabel("spiculation")
    axes[0].legend(frameon=False, fontsize=7, markerscale=3)
    figure.savefig(args.out / "distributions.png", dpi=90)
    plt.close(figure)

    train = SyntheticNodules(spec, n=n, seed=0, image_size=64)
    figure = plot_sample_grid(train, by="label", per_group=8, path=args.out / "samples.png")
    plt.close(figure)
    (args.out / "agreement.json").write_text(json.dumps(agreement, indent=1))
    print("share of samples where 'diameter > 12 mm' equals the label:", agreement)


if __name__ == "__main__":
    main()
