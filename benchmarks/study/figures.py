"""The study's PNG figures (matplotlib, from the ``study`` extra)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nodulebench import SyntheticNodules
from nodulebench.probing import plot_embedding_scatter, plot_gradcam_overlays
from nodulebench.stats import MeanInterval

from .analysis import (
    HEADLINE_METRIC,
    CkaTable,
    field_intervals,
    group_runs,
    metric_interval,
    tests_present,
)
from .config import ExperimentConfig, StudyConfig
from .models import STAGES
from .runner import (
    PROBE_SEED_OFFSET,
    causal_factor,
    run_id,
    study_factors,
    study_test_distributions,
    training_spec,
)
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


def central_slice(tensor: torch.Tensor) -> torch.Tensor:
    """The central axial slice ``(N, C, H, W)`` of volumes ``(N, C, D, H, W)``; images as given.

    Figures show volumes by this slice, the one a 2-D study of the same samples would see.
    """
    return tensor[:, :, tensor.shape[2] // 2] if tensor.ndim == 5 else tensor


def distribution_samples(config: StudyConfig, experiment: Any, path: Path) -> str:
    """Benign and malignant samples of the training and every test distribution."""
    plt = _pyplot()
    spec = training_spec(experiment, study_factors(config))
    rows = {"train": spec, **study_test_distributions(spec, experiment.shortcut)}
    cols = 2 * SAMPLES_PER_CLASS
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, 1.3 * len(rows)), squeeze=False)
    for r, (name, row_spec) in enumerate(rows.items()):
        ds = SyntheticNodules(row_spec, n=64, seed=PROBE_SEED_OFFSET, **config.data.sizes())
        picks = []
        for label in (0, 1):
            found = torch.nonzero(ds.labels == label).flatten()[:SAMPLES_PER_CLASS].tolist()
            picks += found + [None] * (SAMPLES_PER_CLASS - len(found))
        for c, index in enumerate(picks):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if index is not None:
                ax.imshow(central_slice(ds[index][0][None])[0, 0], cmap="gray", vmin=0, vmax=1)
                value = float(ds.factors[experiment.shortcut][index])
                ax.set_title(f"{'BM'[ds.labels[index]]} {value:.3g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    where = " (central axial slices)" if config.data.dims == 3 else ""
    fig.suptitle(
        f"{experiment.name}{where}: B/M = benign/malignant, value = {experiment.shortcut}",
        fontsize=9,
    )
    return _save(fig, path)


def _errorbars(ax: Any, x: float, m: MeanInterval | None, **style: Any) -> None:
    """A point at the mean with its 95 % interval (a bare point for one seed)."""
    if m is None:
        return
    if m.low is None or m.high is None:
        ax.plot([x], [m.mean], linestyle="none", fillstyle="none", **style)
        return
    ax.errorbar(
        [x],
        [m.mean],
        yerr=[[m.mean - m.low], [m.high - m.mean]],
        capsize=2,
        linestyle="none",
        **style,
    )


def _loss_styles(losses: list[str]) -> dict[str, dict[str, Any]]:
    markers = "osD^vPX*"
    return {
        loss: {"marker": markers[i % len(markers)], "color": f"C{i}", "label": loss}
        for i, loss in enumerate(losses)
    }


#: Widest figure in inches: at the 110 dpi of :func:`_save`, 8 inches is 880 px, about
#: the width of a documentation page, so no figure is shrunk until its text is unreadable.
MAX_WIDTH_IN = 8.0


def _column_rows(columns: list[str], inch_per_column: float, margin: float) -> list[list[str]]:
    """``columns`` cut into rows that each fit :data:`MAX_WIDTH_IN`."""
    per_row = max(1, int((MAX_WIDTH_IN - margin) // inch_per_column))
    return [columns[k : k + per_row] for k in range(0, len(columns), per_row)] or [[]]


def interval_figure(
    rows: Mapping[str, Mapping[str, MeanInterval | None]],
    columns: list[str],
    ylabel: str,
    title: str,
    path: Path,
    ylim: tuple[float, float] | None,
    zero_line: bool = False,
) -> str:
    """One point with its 95 % interval per (loss, column), losses side by side.

    Many columns are wrapped onto several panels, one under the other, so that the figure
    stays within :data:`MAX_WIDTH_IN`; the legend sits below the last panel.
    """
    plt = _pyplot()
    losses = list(rows)
    styles = _loss_styles(losses)
    panels = _column_rows(columns, 1.1, 1.0)
    width_in = min(MAX_WIDTH_IN, 1.1 * max(len(p) for p in panels) + 1.0)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width_in, 2.9 * len(panels) + 0.4 * len(losses) / 3 + 0.6),
        squeeze=False,
        layout="constrained",
    )
    width = 0.8 / max(len(losses), 1)
    for panel, ax in zip(panels, axes[:, 0], strict=True):
        for i, loss in enumerate(losses):
            for j, column in enumerate(panel):
                style = dict(styles[loss])
                if j or ax is not axes[0, 0]:
                    style.pop("label")
                _errorbars(ax, j - 0.4 + (i + 0.5) * width, rows[loss].get(column), **style)
        ax.set_xticks(range(len(panel)), panel, rotation=20, ha="right")
        ax.set_xlim(-0.6, max(len(panel), 1) - 0.4)
        if zero_line:
            ax.axhline(0.0, color="0.5", linewidth=0.8, zorder=0)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel, fontsize=9)
    axes[0, 0].set_title(title, fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center", ncols=min(4, max(len(losses), 1)))
    return _save(fig, path)


def worst_group_figure(
    config: StudyConfig, records: list[dict[str, Any]], experiment: str, path: Path
) -> str:
    """Worst-group accuracy per loss and test distribution, with 95 % intervals."""
    groups = group_runs(records)
    tests = tests_present([r for r in records if r["experiment"] == experiment])
    rows = {
        loss: {t: metric_interval(groups[experiment, loss], t, HEADLINE_METRIC) for t in tests}
        for loss in config.losses
        if (experiment, loss) in groups
    }
    return interval_figure(
        rows,
        tests,
        "worst-group accuracy",
        f"{experiment}: mean and 95 % interval over seeds",
        path,
        (0, 1.02),
    )


def sensitivity_figure(
    config: StudyConfig, records: list[dict[str, Any]], experiment: str, path: Path
) -> str:
    """Intervention sensitivity per loss and factor, with 95 % intervals."""
    groups = group_runs(records)
    rows = {
        loss: dict(
            field_intervals(groups[experiment, loss], "sensitivity", "mean_abs_probability_change")
        )
        for loss in config.losses
        if (experiment, loss) in groups
    }
    factors = list(next(iter(rows.values()), {}))
    return interval_figure(
        rows,
        factors,
        "change of P(malignant)\nwhen only this factor moves",
        f"{experiment}: how much each factor moves the prediction (mean over seeds, 95 % interval)",
        path,
        None,
    )


def cka_figure(cka: dict[str, dict[str, Any]], experiment: str, path: Path) -> str:
    """CKA with cross-entropy minus the seed-to-seed floor, stage by stage, with intervals."""
    rows = {loss: {s: row.excess for s, row in stages.items()} for loss, stages in cka.items()}
    return interval_figure(
        rows,
        list(STAGES),
        "similarity to cross-entropy\n(CKA minus seed-to-seed level)",
        f"{experiment}: feature similarity to cross-entropy; below 0 = more different "
        "than two seeds of one loss",
        path,
        None,
        zero_line=True,
    )


def sweep_figure(
    config: StudyConfig,
    records: list[dict[str, Any]],
    shortcut: str,
    experiments: list[ExperimentConfig],
    path: Path,
) -> str:
    """Worst-group accuracy on the headline test against shortcut strength, per loss."""
    from .analysis import HEADLINE_TEST

    plt = _pyplot()
    groups = group_runs(records)
    losses = [loss for loss in config.losses if any((e.name, loss) in groups for e in experiments)]
    styles = _loss_styles(losses)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ordered = sorted(experiments, key=lambda e: e.strength)
    for i, loss in enumerate(losses):
        xs, means = [], []
        for e in ordered:
            m = metric_interval(groups.get((e.name, loss), []), HEADLINE_TEST, HEADLINE_METRIC)
            if m is None:
                continue
            x = e.strength + (i - len(losses) / 2) * 0.004
            _errorbars(ax, x, m, **{k: v for k, v in styles[loss].items() if k != "label"})
            xs.append(x)
            means.append(m.mean)
        ax.plot(
            xs,
            means,
            color=styles[loss]["color"],
            marker=styles[loss]["marker"],
            label=loss,
            linewidth=1,
        )
    ax.set_xlabel(f"strength of the {shortcut} shortcut in training")
    ax.set_ylabel(f"worst-group accuracy ({HEADLINE_TEST})")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{shortcut}: mean and 95 % interval over seeds", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def training_curves_figure(
    config: StudyConfig, records: list[dict[str, Any]], experiment: str, path: Path
) -> str:
    """Every run's training curve: stage-1 loss and validation scores per epoch, per loss.

    One panel per loss, one line per seed: the training objective (left axis) and the
    validation split's accuracy and worst-group accuracy (right axis), which the two
    selection regimes read.
    """
    plt = _pyplot()
    groups = group_runs(records)
    losses = [loss for loss in config.losses if (experiment, loss) in groups]
    cols = min(4, len(losses))
    rows = -(-len(losses) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False)
    for i, loss in enumerate(losses):
        ax = axes[i // cols][i % cols]
        right = ax.twinx()
        for run in groups[experiment, loss]:
            epochs = range(1, len(run["loss_history"]) + 1)
            ax.plot(epochs, run["loss_history"], "o-", color="black", lw=0.8, ms=2, alpha=0.7)
            history = run.get("validation_history", [])
            if history:
                x = [h["epoch"] for h in history]
                right.plot(
                    x, [h["accuracy"] for h in history], "o-", color="tab:blue", lw=0.8, ms=2
                )
                right.plot(x, [h["worst_group_accuracy"] for h in history], color="tab:red", lw=0.8)
        right.set_ylim(0, 1)
        ax.set_title(loss, fontsize=8)
        ax.tick_params(labelsize=6)
        right.tick_params(labelsize=6)
    for j in range(len(losses), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(
        f"{experiment}: training loss (black, left), validation accuracy (blue) and "
        "worst-group accuracy (red, right), one line per seed",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, path)


def embedding_figure(
    config: StudyConfig, store: RunStore, experiment: Any, causal: str, path: Path
) -> str:
    """PCA of each loss's encoder output, coloured by the causal and the shortcut factor."""
    plt = _pyplot()
    seed = config.seeds[0]
    losses = [loss for loss in config.losses if store.is_done(run_id(experiment.name, loss, seed))]
    spec = training_spec(experiment, study_factors(config)).decorrelated()
    probe = SyntheticNodules(
        spec, n=config.data.n_probe, seed=PROBE_SEED_OFFSET, **config.data.sizes()
    )
    # Columns of at most MAX_WIDTH_IN; each block of two rows (causal, shortcut) holds
    # as many losses as fit, and the blocks stack.
    per_row = max(1, int(MAX_WIDTH_IN // 2.6))
    blocks = max(1, -(-len(losses) // per_row))
    cols = min(per_row, max(len(losses), 1))
    fig, axes = plt.subplots(
        2 * blocks, cols, figsize=(2.6 * cols, 2.6 * 2 * blocks), squeeze=False
    )
    for ax in axes.flat:
        ax.set_visible(False)
    for k, loss in enumerate(losses):
        block, c = divmod(k, per_row)
        arrays = store.load_arrays(run_id(experiment.name, loss, seed))
        coords = torch.from_numpy(arrays["projection"])
        for r, factor in enumerate((causal, experiment.shortcut)):
            ax = axes[2 * block + r][c]
            ax.set_visible(True)
            plot_embedding_scatter(coords, probe.factors[factor], label=factor, ax=ax)
            ax.set_title(f"{loss}\ncolour: {factor}", fontsize=8)
    return _save(fig, path)


def write_figures(
    config: StudyConfig, store: RunStore, records: list[dict[str, Any]], cka: dict[str, CkaTable]
) -> dict[str, dict[str, Any]]:
    """Write every figure; return ``{experiment: {figure kind: relative path(s)}}``.

    ``"_sweeps"`` maps each shortcut factor trained at three or more strengths to its
    strength-sweep figure.
    """
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
            "worst_group": worst_group_figure(
                config, records, name, folder / f"worst_group_{name}.png"
            ),
            "sensitivity": sensitivity_figure(
                config, records, name, folder / f"sensitivity_{name}.png"
            ),
            "embeddings": embedding_figure(
                config, store, experiment, causal_factor(), folder / f"embeddings_{name}.png"
            ),
            "curves": training_curves_figure(config, records, name, folder / f"curves_{name}.png"),
        }
        if cka[name]:
            figs["cka"] = cka_figure(cka[name], name, folder / f"cka_{name}.png")
        figs["saliency"] = {}
        for loss in losses:
            rid = run_id(name, loss, config.seeds[0])
            if not store.is_done(rid):
                continue
            arrays = store.load_arrays(rid)
            fig = plot_gradcam_overlays(
                *(
                    central_slice(torch.from_numpy(arrays[f"saliency.{key}"]))
                    for key in ("images", "maps", "spicules")
                )
            )
            where = ", central axial slice" if config.data.dims == 3 else ""
            fig.suptitle(f"{name}, {loss}: Grad-CAM, spicule mask contour{where}", fontsize=9)
            figs["saliency"][loss] = _save(fig, folder / f"gradcam_{name}_{loss}.png")
        out[name] = figs
    by_shortcut: dict[str, list[ExperimentConfig]] = {}
    for experiment in config.experiments:
        by_shortcut.setdefault(experiment.shortcut, []).append(experiment)
    sweeps = {
        shortcut: sweep_figure(
            config, records, shortcut, experiments, folder / f"sweep_{shortcut}.png"
        )
        for shortcut, experiments in by_shortcut.items()
        if len({e.strength for e in experiments}) >= 3
    }
    if sweeps:
        out["_sweeps"] = sweeps
    return out
