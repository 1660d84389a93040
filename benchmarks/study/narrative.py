"""``report.md``: tables, figures and the findings read off the numbers."""

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
    "heldout": "only the (label, shortcut side) group that training lacked",
    "covariate": "acquisition shift: noise, blur and pixel spacing changed",
}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cell(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    """``mean ± std`` (or ``—`` where undefined)."""
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def metric_section(config: StudyConfig, records: list[dict[str, Any]], experiment: str,
                   metric: str) -> str:
    """Loss x test distribution table of one metric."""
    groups = group_runs(records)
    tests = tests_present(records)
    rows = [[loss] + [cell(*metric_means(groups[experiment, loss], t, metric)) for t in tests]
            for loss in config.losses if (experiment, loss) in groups]
    return f"**{METRIC_TITLES[metric]}** (mean ± std over seeds)\n\n" + table(
        ["loss", *tests], rows)


def identification_tables(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
                          experiment: str) -> list[str]:
    """Probe selectivity, intervention sensitivity, Grad-CAM energy and CKA tables."""
    groups = group_runs(records)
    losses = [loss for loss in config.losses if (experiment, loss) in groups]
    probes = {loss: {r.factor: r for r in mean_probes(groups[experiment, loss])}
              for loss in losses}
    factors = list(next(iter(probes.values()))) if probes else []
    parts = ["**Linear-probe selectivity** of the encoder output on the decorrelated "
             "distribution (score minus shuffled-target control; R² for continuous factors, "
             "balanced accuracy for categorical ones): what the features *encode*.\n\n"
             + table(["loss", *factors],
                     [[loss] + [cell(probes[loss][f].selectivity, digits=2) if f in probes[loss]
                                else "—" for f in factors] for loss in losses])]
    sens = {loss: {r.factor: r for r in mean_sensitivity(groups[experiment, loss])}
            for loss in losses}
    sens_factors = list(next(iter(sens.values()))) if sens else []
    parts.append(
        "**Intervention sensitivity**: mean |change of the malignant probability| when only "
        "that factor moves (10th to 90th percentile, or between categories): what the model "
        "*uses*.\n\n"
        + table(["loss", *sens_factors],
                [[loss] + [cell(sens[loss][f].mean_abs_probability_change, digits=2)
                           if f in sens[loss] else "—" for f in sens_factors]
                 for loss in losses]))
    regions = list(groups[experiment, losses[0]][0]["gradcam_energy"]) if losses else []
    parts.append(
        "**Grad-CAM energy**: share of the attribution (last conv stage) inside each "
        "ground-truth region.\n\n"
        + table(["loss", *regions],
                [[loss] + [cell(*mean_std(r["gradcam_energy"][g] for r in groups[experiment,
                                                                                  loss]),
                                digits=2) for g in regions] for loss in losses]))
    cka = cka_by_layer(config, store, experiment)
    if cka:
        parts.append(
            f"**Linear CKA with the {REFERENCE_LOSS} model**, layer by layer (same probe "
            "images; 1 = the same representation up to rotation and scale).\n\n"
            + table(["loss", *STAGES],
                    [[loss] + [cell(cka[loss].get(s), digits=2) for s in STAGES]
                     for loss in cka]))
    return parts


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
            f"({shift[best][1]:.3f}, i.i.d. {shift[best][0]:.3f}) and **{worst}** the lowest "
            f"({shift[worst][1]:.3f}, i.i.d. {shift[worst][0]:.3f})."
        )
        drops = ", ".join(f"{loss} {iid - rev:+.3f}" for loss, (iid, rev) in
                          sorted(shift.items(), key=lambda kv: kv[1][0] - kv[1][1]))
        lines.append(f"Drop from i.i.d. to reversed (smaller = less shortcut reliance): {drops}.")
    causal = causal_factor()
    ratios = {}
    for loss in losses:
        sens = {r.factor: r.mean_abs_probability_change
                for r in mean_sensitivity(groups[name, loss])}
        if causal in sens and experiment.shortcut in sens:
            ratios[loss] = (sens[experiment.shortcut], sens[causal])
    if ratios:
        parts = ", ".join(f"{loss} {s:.2f} vs {c:.2f}" for loss, (s, c) in ratios.items())
        users = [loss for loss, (s, c) in ratios.items() if s > c]
        lines.append(
            f"Intervention sensitivity, {experiment.shortcut} (shortcut) vs {causal} (causal): "
            f"{parts}. "
            + (f"Models that react more to the shortcut than to the cause: {', '.join(users)}."
               if users else "Every model reacts more to the cause than to the shortcut.")
        )
    cka = cka_by_layer(config, store, name)
    if cka:
        first, last = STAGES[0], STAGES[-1]
        early = [v[first] for v in cka.values() if first in v]
        late = [v[last] for v in cka.values() if last in v]
        if early and late:
            e, la = sum(early) / len(early), sum(late) / len(late)
            verdict = ("diverge mostly in the last layers, as Kornblith et al. (2021) found on "
                       "ImageNet" if e > la + 0.05 else
                       "do not show the ImageNet pattern of diverging only in the last layers")
            lines.append(f"Mean CKA with {REFERENCE_LOSS}: {e:.2f} at {first}, {la:.2f} at "
                         f"{last}: representations {verdict}.")
    return lines


def render_report(config: StudyConfig, store: RunStore, records: list[dict[str, Any]],
                  figures: dict[str, dict[str, Any]], machine: str) -> str:
    """The whole ``report.md``."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seconds = sum(r["total_seconds"] for r in records)
    out = [
        f"# The effect of the loss on generalization — study report ({config.name})",
        "",
        f"nodulebench {nodulebench.__version__}; {len(records)} runs "
        f"({len(config.experiments)} training distributions x {len(config.losses)} losses x "
        f"{len(config.seeds)} seeds); {seconds / 60:.1f} min of run time on {machine}; "
        f"written {now}.",
        "",
        "A faithful re-design of the protocol of Baltatzis et al., *The Effect of the Loss on "
        "Generalization: Empirical Study on Synthetic Lung Nodule Data* (iMIMIC 2021). Their "
        "generator parameters, architecture and result tables are not public, so these numbers "
        "are ours, not a copy of theirs.",
        "",
        "## Protocol",
        "",
        f"- Data: SyntheticNodules, {config.data.image_size}x{config.data.image_size} px; "
        f"{config.data.n_train} training images per (experiment, seed); {config.data.n_test} "
        f"per test distribution; the label is malignant iff {causal_factor()} passes the "
        "default threshold (the causal factor).",
        f"- Model: {config.model.arch} (width {config.model.width}); embedding losses train "
        "encoder + projection head on two flipped/rotated views, then a linear classifier on "
        "the frozen encoder (the SupCon protocol); cross_entropy trains end to end; supcon_ce "
        "trains SupCon and cross-entropy jointly; ntxent ignores labels.",
        f"- Training: {config.train.epochs} epochs, batch {config.train.batch_size}, AdamW "
        f"lr {config.train.lr}, seeds {list(config.seeds)}.",
        "- Test distributions: "
        + "; ".join(f"`{k}`: {v}" for k, v in TEST_MEANINGS.items()) + ".",
        "",
    ]
    for experiment in config.experiments:
        name = experiment.name
        if name not in figures:
            continue
        figs = figures[name]
        out += [f"## Experiment `{name}`: {experiment.shortcut} tied to the label at strength "
                f"{experiment.strength}", "", f"![samples]({figs['samples']})", "",
                "### What the numbers show", ""]
        out += [f"- {line}" for line in findings(config, store, records, experiment)]
        out += ["", "### Generalization", "", f"![balanced accuracy]({figs['accuracy']})", ""]
        for metric in METRIC_TITLES:
            out += [metric_section(config, records, name, metric), ""]
        out += ["### Which features each loss learned", ""]
        for part in identification_tables(config, store, records, name):
            out += [part, ""]
        out += [f"![probe selectivity]({figs['probes']})", "",
                f"![intervention sensitivity]({figs['sensitivity']})", "",
                f"![embeddings]({figs['embeddings']})", ""]
        if "cka" in figs:
            out += [f"![CKA by layer]({figs['cka']})", ""]
        out += ["Grad-CAM overlays (seed " f"{config.seeds[0]}):", ""]
        out += [f"![Grad-CAM {loss}]({path})" for loss, path in figs["gradcam"].items()]
        out += [""]
    return "\n".join(out) + "\n"
