"""The study's PNG figures (matplotlib, from the ``study`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodulebench import SyntheticNodules
from nodulebench.probing import (
    plot_embedding_scatter,
    plot_gradcam_overlays,
    plot_probe_heatmap,
    plot_sensitivity_bars,
)

from .analysis import (
    cka_by_layer,
    group_runs,
    mean_probes,
    mean_sensitivity,
    metric_means,
    tests_present,
)
from .config import StudyConfig
from .models import STAGES
from .runner import PROBE_SEED_OFFSET, causal_factor, run_id, training_spec
from .store import RunStore

SAMPLES_PER_CLASS = 4


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return f"figures/{path.name}"


def distribution_samples(config: StudyConfig, experiment: Any, path: Path) -> str:
    """Benign and malignant samples of the training and every test distribution."""
    plt = _pyplot()
    spec = training_spec(experiment)
    rows = {"train": spec, **spec.test_distributions()}
    cols = 2 * SAMPLES_PER_CLASS
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.3 * len(rows)),
                             squeeze=False)
    for r, (name, row_spec) in enumerate(rows.items()):
        ds = SyntheticNodules(row_spec, n=64, seed=PROBE_SEED_OFFSET,
                              image_size=config.data.image_size)
        picks = []
        for label in (0, 1):
            found = torch.nonzero(ds.labels == label).flatten()[:SAMPLES_PER_CLASS].tolist()
            picks += found + [None] * (SAMPLES_PER_CLASS - len(found))
        for c, index in enumerate(picks):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if index is not None:
                ax.imshow(ds[index][0][0], cmap="gray", vmin=0, vmax=1)
                value = float(ds.factors[experiment.shortcut][index])
                ax.set_title(f"{'BM'[ds.labels[index]]} {value:.3g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{experiment.name}: B/M = benign/malignant, value = {experiment.shortcut}",
                 fontsize=9)
    return _save(fig, path)


def accuracy_heatmap(config: StudyConfig, records: list[dict[str, Any]], experiment: str,
                     path: Path) -> str:
    """Balanced accuracy, loss x test distribution (mean over seeds)."""
    plt = _pyplot()
    groups = group_runs(records)
    tests = tests_present(records)
    losses = [loss for loss in config.losses if (experiment, loss) in groups]
    values = torch.full((len(losses), len(tests)), float("nan"))
    for i, loss in enumerate(losses):
        for j, test in enumerate(tests):
            mean, _ = metric_means(groups[experiment, loss], test, "balanced_accuracy")
            if mean is not None:
                values[i, j] = mean
    fig, ax = plt.subplots(figsize=(1.2 * len(tests) + 2, 0.45 * len(losses) + 1.2))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(losses)):
        for j in range(len(tests)):
            if not torch.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right")
    ax.set_yticks(range(len(losses)), losses)
    ax.set_title(f"{experiment}: balanced accuracy")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save(fig, path)


def cka_figure(cka: dict[str, dict[str, float]], experiment: str, path: Path) -> str:
    """Linear CKA of each loss's model with the cross-entropy model, stage by stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for loss, layers in cka.items():
        ax.plot(range(len(STAGES)), [layers.get(s, float("nan")) for s in STAGES],
                marker="o", label=loss)
    ax.set_xticks(range(len(STAGES)), STAGES)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("linear CKA with cross_entropy")
    ax.set_title(f"{experiment}: representation similarity by layer")
    ax.legend(fontsize=7)
    return _save(fig, path)


def embedding_figure(config: StudyConfig, store: RunStore, experiment: Any, causal: str,
                     path: Path) -> str:
    """PCA of each loss's encoder output, coloured by the causal and the shortcut factor."""
    plt = _pyplot()
    seed = config.seeds[0]
    losses = [loss for loss in config.losses
              if store.is_done(run_id(experiment.name, loss, seed))]
    spec = training_spec(experiment).test_distributions()["decorrelated"]
    probe = SyntheticNodules(spec, n=config.data.n_probe, seed=seed + PROBE_SEED_OFFSET,
                             image_size=config.data.image_size)
    fig, axes = plt.subplots(2, len(losses), figsize=(2.6 * len(losses), 5.2), squeeze=False)
    for c, loss in enumerate(losses):
        _, arrays = store.load(run_id(experiment.name, loss, seed))
        coords = torch.from_numpy(arrays["projection"])
        for r, factor in enumerate((causal, experiment.shortcut)):
            plot_embedding_scatter(coords, probe.factors[factor], label=factor, ax=axes[r][c])
            axes[r][c].set_title(f"{loss}\ncolour: {factor}", fontsize=8)
    return _save(fig, path)


def write_figures(config: StudyConfig, store: RunStore,
                  records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Write every figure; return ``{experiment: {figure kind: relative path(s)}}``."""
    folder = store.root / "figures"
    groups = group_runs(records)
    out: dict[str, dict[str, Any]] = {}
    for experiment in config.experiments:
        name = experiment.name
        losses = [loss for loss in config.losses if (name, loss) in groups]
        if not losses:
            continue
        figs: dict[str, Any] = {
            "samples": distribution_samples(config, experiment, folder / f"samples_{name}.png"),
            "accuracy": accuracy_heatmap(config, records, name,
                                         folder / f"balanced_accuracy_{name}.png"),
        }
        probes = {loss: mean_probes(groups[name, loss]) for loss in losses}
        figs["probes"] = _save(plot_probe_heatmap(probes).figure,
                               folder / f"probes_{name}.png")
        sensitivity = {loss: mean_sensitivity(groups[name, loss]) for loss in losses}
        figs["sensitivity"] = _save(plot_sensitivity_bars(sensitivity).figure,
                                    folder / f"sensitivity_{name}.png")
        figs["embeddings"] = embedding_figure(config, store, experiment, causal_factor(),
                                              folder / f"embeddings_{name}.png")
        cka = cka_by_layer(config, store, name)
        if cka:
            figs["cka"] = cka_figure(cka, name, folder / f"cka_{name}.png")
        figs["gradcam"] = {}
        for loss in losses:
            _, arrays = store.load(run_id(name, loss, config.seeds[0]))
            fig = plot_gradcam_overlays(torch.from_numpy(arrays["gradcam.images"]),
                                        torch.from_numpy(arrays["gradcam.maps"]),
                                        torch.from_numpy(arrays["gradcam.spicules"]))
            fig.suptitle(f"{name}, {loss}: Grad-CAM, spicule mask contour", fontsize=9)
            figs["gradcam"][loss] = _save(fig, folder / f"gradcam_{name}_{loss}.png")
        out[name] = figs
    return out
