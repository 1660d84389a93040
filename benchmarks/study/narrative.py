"""The report's content — tables, figures and findings read off the numbers — as blocks.

:func:`report_blocks` is rendered to ``report.md`` by the study and to the docs page by
``docs/_scripts/make_study_page.py``, from one definition.
"""

from __future__ import annotations

import datetime
from typing import Any

import nodulebench

from .analysis import (
    REFERENCE_LOSS,
    cka_by_layer,
    group_runs,
    mean_probes,
    mean_sensitivity,
    mean_std,
    metric_means,
    tests_present,
)
from .config import StudyConfig
from .document import Block, Bullets, Figure, Heading, Paragraph, Table
from .models import STAGES
from .runner import causal_factor
from .store import RunStore

METRIC_TITLES = {
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (malignant recall)",
    "specificity": "Specificity (benign recall)",
    "roc_auc": "ROC AUC",
    "ece": "Expected calibration error (lower is better)",
}

TEST_MEANINGS = {
    "iid": "same distribution as training (shortcut intact)",
    "decorrelated": "shortcut factor independent of the label",
    "reversed": "shortcut correlation negated",
    "heldout": "only the (label, shortcut side) group that training made rarest",
    "covariate": "acquisition shift: noise, blur and pixel spacing changed",
}

# A difference in intervention sensitivity smaller than this is not called a preference.
SENSITIVITY_MARGIN = 0.02


def cell(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    """``mean ± std``, the mean alone for a single seed, ``—`` where undefined."""
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_table(config: StudyConfig, records: list[dict[str, Any]], experiment: str,
                 metric: str) -> Table:
    """Loss x test distribution table of one metric."""
    groups = group_runs(records)
    tests = tests_present(records)
    rows = tuple((loss, *(cell(*metric_means(groups[experiment, loss], t, metric))
                          for t in tests))
                 for loss in config.losses if (experiment, loss) in groups)
    return Table(f"**{METRIC_TITLES[metric]}** (mean ± std over seeds)", ("loss", *tests), rows)


def identification_tables(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
                          experiment: str) -> list[Table]:
    """Probe selectivity, intervention sensitivity, Grad-CAM energy and CKA tables."""
    groups = group_runs(records)
    losses = [loss for loss in config.losses if (experiment, loss) in groups]
    probes = {loss: {r.factor: r for r in mean_probes(groups[experiment, loss])}
              for loss in losses}
    factors = list(probes[losses[0]]) if losses else []
    tables = [Table(
        "**Linear-probe selectivity** of the encoder output on the decorrelated distribution "
        "(score minus shuffled-target control; R² for continuous factors, balanced accuracy "
        "for categorical ones): what the features *encode*.",
        ("loss", *factors),
        tuple((loss, *(cell(probes[loss][f].selectivity, digits=2) if f in probes[loss]
                       else "—" for f in factors)) for loss in losses),
    )]
    sens = {loss: {r.factor: r for r in mean_sensitivity(groups[experiment, loss])}
            for loss in losses}
    sens_factors = list(sens[losses[0]]) if losses else []
    tables.append(Table(
        "**Intervention sensitivity**: mean absolute change of the malignant probability "
        "when only that factor moves (10th to 90th percentile, or between categories): what "
        "the model *uses*.",
        ("loss", *sens_factors),
        tuple((loss, *(cell(sens[loss][f].mean_abs_probability_change, digits=2)
                       if f in sens[loss] else "—" for f in sens_factors)) for loss in losses),
    ))
    regions = list(groups[experiment, losses[0]][0]["gradcam_energy"]) if losses else []
    tables.append(Table(
        "**Grad-CAM energy**: share of the attribution (last conv stage) inside each "
        "ground-truth region.",
        ("loss", *regions),
        tuple((loss, *(cell(*mean_std(r["gradcam_energy"][g]
                                      for r in groups[experiment, loss]), digits=2)
                       for g in regions)) for loss in losses),
    ))
    cka = cka_by_layer(config, store, experiment)
    if cka:
        tables.append(Table(
            f"**Linear CKA with the {REFERENCE_LOSS} model**, layer by layer (same probe "
            "images; 1 = the same representation up to rotation and scale).",
            ("loss", *STAGES),
            tuple((loss, *(cell(cka[loss].get(s), digits=2) for s in STAGES)) for loss in cka),
        ))
    return tables


def findings(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
             experiment: Any) -> list[str]:
    """Plain sentences computed from the numbers (no claim that the numbers don't carry)."""
    groups = group_runs(records)
    name = experiment.name
    losses = [loss for loss in config.losses if (name, loss) in groups]
    lines = []
    shift = {}
    for loss in losses:
        iid, _ = metric_means(groups[name, loss], "iid", "balanced_accuracy")
        rev, _ = metric_means(groups[name, loss], "reversed", "balanced_accuracy")
        if iid is not None and rev is not None:
            shift[loss] = (iid, rev)
    if shift:
        best = max(shift, key=lambda k: shift[k][1])
        worst = min(shift, key=lambda k: shift[k][1])
        lines.append(
            f"Under the reversed shortcut, **{best}** keeps the highest balanced accuracy "
            f"({shift[best][1]:.3f}; i.i.d. {shift[best][0]:.3f}) and **{worst}** the lowest "
            f"({shift[worst][1]:.3f}; i.i.d. {shift[worst][0]:.3f})."
        )
        drops = ", ".join(f"{loss} {iid - rev:+.3f}" for loss, (iid, rev) in
                          sorted(shift.items(), key=lambda kv: kv[1][0] - kv[1][1]))
        lines.append(f"Drop of balanced accuracy from i.i.d. to reversed (smaller = less "
                     f"reliance on the shortcut): {drops}.")
    causal = causal_factor()
    pairs = {}
    for loss in losses:
        sens = {r.factor: r.mean_abs_probability_change
                for r in mean_sensitivity(groups[name, loss])}
        if causal in sens and experiment.shortcut in sens:
            pairs[loss] = (sens[experiment.shortcut], sens[causal])
    if pairs:
        values = ", ".join(f"{loss} {s:.2f} vs {c:.2f}" for loss, (s, c) in pairs.items())
        users = [loss for loss, (s, c) in pairs.items() if s > c + SENSITIVITY_MARGIN]
        verdict = (f"Models that react more to the shortcut than to the cause: "
                   f"{', '.join(users)}." if users else
                   "No model reacts more to the shortcut than to the cause.")
        lines.append(f"Intervention sensitivity to `{experiment.shortcut}` (shortcut) vs "
                     f"`{causal}` (cause): {values}. {verdict}")
    cka = cka_by_layer(config, store, name)
    first, last = STAGES[0], STAGES[-1]
    early = [v[first] for v in cka.values() if first in v]
    late = [v[last] for v in cka.values() if last in v]
    if early and late:
        e, la = sum(early) / len(early), sum(late) / len(late)
        verdict = ("they diverge mostly in the last layers, as Kornblith et al. (2021) found "
                   "on ImageNet" if e > la + 0.05 else
                   "they do not show the ImageNet pattern of diverging only in the last layers")
        lines.append(f"Mean linear CKA with {REFERENCE_LOSS}: {e:.2f} at {first}, {la:.2f} at "
                     f"{last}: {verdict}.")
    return lines


def protocol_blocks(config: StudyConfig, records: list[dict[str, Any]],
                    machine: str) -> list[Block]:
    """What was run, on what, and the honest note on the paper's unpublished details."""
    seconds = sum(r["total_seconds"] for r in records)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        Paragraph(
            f"nodulebench {nodulebench.__version__}, preset `{config.name}`: {len(records)} runs "
            f"({len(config.experiments)} training distributions x {len(config.losses)} losses x "
            f"{len(config.seeds)} seeds), {seconds / 60:.1f} min of run time on {machine}; "
            f"written {now}."),
        Paragraph(
            "A faithful re-design of the protocol of Baltatzis et al., *The Effect of the Loss "
            "on Generalization: Empirical Study on Synthetic Lung Nodule Data* (iMIMIC 2021). "
            "The paper's generator parameters, architecture and result tables are not public, "
            "so these numbers are ours, not a copy of theirs."),
        Heading(2, "Protocol"),
        Bullets((
            f"Data: SyntheticNodules, {config.data.image_size}x{config.data.image_size} px; "
            f"{config.data.n_train} training images per (experiment, seed), "
            f"{config.data.n_test} per test distribution; malignant iff `{causal_factor()}` "
            "passes the default threshold (the causal factor).",
            f"Model: `{config.model.arch}` (width {config.model.width}). Embedding losses train "
            "encoder + projection head on two flipped/rotated views, then a linear classifier "
            "on the frozen encoder (the SupCon protocol); `cross_entropy` trains end to end; "
            "`supcon_ce` trains SupCon and cross-entropy jointly; `ntxent` ignores labels.",
            f"Training: {config.train.epochs} epochs, batch {config.train.batch_size}, AdamW "
            f"with a one-cycle schedule to lr {config.train.lr}; seeds {list(config.seeds)}.",
            "Test distributions: "
            + "; ".join(f"`{k}`: {v}" for k, v in TEST_MEANINGS.items()) + ".",
        )),
    ]


def experiment_blocks(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
                      experiment: Any, figures: dict[str, Any]) -> list[Block]:
    """Findings, metric tables, identification tables and figures of one experiment."""
    name = experiment.name
    blocks: list[Block] = [
        Heading(2, f"Experiment `{name}`: `{experiment.shortcut}` tied to the label at "
                   f"strength {experiment.strength}"),
        Figure(figures["samples"], f"samples of every distribution, {name}"),
        Heading(3, "What the numbers show"),
        Bullets(tuple(findings(config, store, records, experiment))),
        Heading(3, "Generalization"),
        Figure(figures["accuracy"], f"balanced accuracy, {name}"),
    ]
    blocks += [metric_table(config, records, name, metric) for metric in METRIC_TITLES]
    blocks.append(Heading(3, "Which features each loss learned"))
    blocks += identification_tables(config, store, records, name)
    blocks += [Figure(figures["probes"], f"probe selectivity, {name}"),
               Figure(figures["sensitivity"], f"intervention sensitivity, {name}"),
               Figure(figures["embeddings"], f"embeddings, {name}")]
    if "cka" in figures:
        blocks.append(Figure(figures["cka"], f"CKA by layer, {name}"))
    blocks.append(Paragraph(f"Grad-CAM overlays (seed {config.seeds[0]}; contour: spicule "
                            "mask):"))
    blocks += [Figure(path, f"Grad-CAM, {name}, {loss}")
               for loss, path in figures["gradcam"].items()]
    return blocks


def report_blocks(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
                  figures: dict[str, dict[str, Any]], machine: str) -> list[Block]:
    """The whole report."""
    blocks: list[Block] = [
        Heading(1, f"The effect of the loss on generalization: study report ({config.name})"),
        *protocol_blocks(config, records, machine),
    ]
    for experiment in config.experiments:
        if experiment.name in figures:
            blocks += experiment_blocks(config, store, records, experiment,
                                        figures[experiment.name])
    return blocks
