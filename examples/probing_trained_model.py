"""Probing a trained model: what its features encode (probes) and what it uses (interventions).

Two small CNNs are trained with cross-entropy: one where nodule size is a perfect shortcut
for the label (which follows spiculation), one on the same distribution without the
shortcut. On a decorrelated test set, linear probes say which factors can be read from
each model's features; interventions on the generator (the same images re-rendered with
one factor changed) say which factors move its prediction.

    python examples/probing_trained_model.py --out probing
    python examples/probing_trained_model.py --tiny --out /tmp/probing
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a headless backend, chosen by the script (the library never does)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from nodulebench import NoduleSpec, SyntheticNodules  # noqa: E402
from nodulebench.models import recompute_batch_norm, small_cnn  # noqa: E402
from nodulebench.plotting import plot_probe_heatmap, plot_sensitivity_bars  # noqa: E402
from nodulebench.probing import (  # noqa: E402
    extract_features,
    intervention_sensitivity,
    probe_factors,
    write_records,
)
from nodulebench.threads import set_threads  # noqa: E402

FACTORS = ["spiculation", "diameter_mm", "lobulation", "sphericity", "texture"]


def train_model(spec: NoduleSpec, n: int, steps: int, seed: int) -> nn.Module:
    """The examples' small CNN + a linear head, trained with cross-entropy on ``n`` images."""
    torch.manual_seed(seed)  # the script's weights; the library never touches this RNG
    model = nn.Sequential()
    model.add_module("features", small_cnn())  # (N, 64) pooled features
    model.add_module("head", nn.Linear(64, 2))
    data = SyntheticNodules(spec, n=n, seed=seed, image_size=32)
    images, labels = data.render(range(n)), data.labels
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, n, (64,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recompute_batch_norm(model, images)  # then eval mode
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("probing"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    n_train, steps, n_test = (128, 5, 64) if args.tiny else (2048, 300, 500)

    train_spec = NoduleSpec().with_shortcut("diameter_mm", 1.0)
    models = {
        "size shortcut": train_model(train_spec, n_train, steps, seed=1),
        "no shortcut": train_model(train_spec.decorrelated(), n_train, steps, seed=2),
    }
    test = SyntheticNodules(train_spec.decorrelated(), n=n_test, seed=99, image_size=32)

    probes, used, summary = {}, {}, []
    for name, model in models.items():
        with torch.no_grad():
            predicted = model(test.render(range(n_test))).argmax(dim=1)
        accuracy = float((predicted == test.labels).double().mean())
        probes[name] = probe_factors(
            extract_features(model, test, "features"),
            {f: test.factors[f] for f in FACTORS},
            folds=3,
        )
        used[name] = intervention_sensitivity(model, test, factors=FACTORS, n=min(128, n_test))
        summary.append({"model": name, "decorrelated accuracy": round(accuracy, 3)})
        print(f"{name}: accuracy on the decorrelated test set {accuracy:.3f}")
        for probe, effect in zip(probes[name], used[name], strict=True):
            print(
                f"  {probe.factor:<12} probe {probe.metric} {probe.score:5.2f} "
                f"(selectivity {probe.selectivity:5.2f}), "
                f"p(malignant) moves {effect.mean_abs_probability_change:.3f}"
            )

    figure, (ax_probe, ax_used) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    plot_probe_heatmap(probes, value="selectivity", ax=ax_probe)
    ax_probe.set_title("decodable: probe selectivity", fontsize=9)
    plot_sensitivity_bars(used, ax=ax_used)
    ax_used.set_title("used: counterfactual change of p(malignant)", fontsize=9)
    figure.savefig(args.out / "probing.png", dpi=90)
    write_records([r for rs in probes.values() for r in rs], args.out / "probes.csv")
    write_records([r for rs in used.values() for r in rs], args.out / "interventions.csv")
    (args.out / "accuracy.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
