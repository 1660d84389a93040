"""The report's content — tables, figures and findings read off the numbers — as blocks.

:func:`report_blocks` is rendered to ``report.md`` by the study and to the docs page by
``benchmarks/make_study_page.py``, from one definition.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import nodulebench
from nodulebench.stats import MeanInterval, PairResult, holm, paired_comparison

from .analysis import (
    ALPHA,
    FIT_MARGIN,
    FIT_TEST,
    HEADLINE_METRIC,
    HEADLINE_TEST,
    HEADS,
    ONE_GROUP_TESTS,
    REFERENCE_LOSS,
    CkaTable,
    compare_losses,
    control_by_factor,
    dfr_gains,
    field_intervals,
    group_runs,
    interval,
    metric_by_seed,
    metric_interval,
    not_fit_losses,
    saliency_intervals,
    tests_present,
)
from .config import STUDY_LOSSES, ExperimentConfig, StudyConfig
from .contrasts import EQUIVALENCE_MARGIN, POWER, Contrast, primary_contrasts
from .document import Block, Bullets, Figure, Heading, Paragraph, Table
from .models import STAGES
from .runner import GROUPS, causal_factor

METRIC_TITLES = {
    "worst_group_accuracy": "Worst-group accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (malignant recall)",
    "specificity": "Specificity (benign recall)",
    "roc_auc": "ROC AUC",
    "ece": "Expected calibration error (lower is better)",
}
# Metrics that need both classes are not shown for the one-group test sets.
BOTH_CLASSES = ("balanced_accuracy", "sensitivity", "specificity", "roc_auc")

TEST_MEANINGS = {
    "iid": "same distribution as training (shortcut intact)",
    "decorrelated": "shortcut factor independent of the label: the four groups equally large",
    "reversed": "shortcut correlation negated",
    "malignant-conflicting": "only malignant nodules on the benign-looking side of the "
    "shortcut, one of the two groups a shortcut makes rare in training (both are equally "
    "rare); its worst-group accuracy is that group's accuracy",
    "benign-conflicting": "only benign nodules on the malignant-looking side: the other rare group",
    "covariate": "acquisition shift: noise, blur and pixel spacing changed (an acquisition "
    "shortcut's own factor is left as in training)",
}

HEAD_TITLES = {
    "model": "protocol's head",
    "linear": "linear head refit on the training set",
    "dfr": "DFR head (refit on the group-balanced set)",
}


def cell(m: MeanInterval | None, digits: int = 3) -> str:
    """``mean [low, high]`` (95 % t-interval over seeds); one seed says so; ``—`` if undefined."""
    if m is None:
        return "—"
    if m.low is None or m.high is None:
        return f"{m.mean:.{digits}f} (1 seed, no interval)"
    return f"{m.mean:.{digits}f} [{m.low:.{digits}f}, {m.high:.{digits}f}]"


def _losses(
    config: StudyConfig, groups: dict[tuple[str, str], list[dict[str, Any]]], experiment: str
) -> dict[str, list[dict[str, Any]]]:
    return {
        loss: groups[experiment, loss] for loss in config.losses if (experiment, loss) in groups
    }


def metric_table(
    config: StudyConfig,
    records: list[dict[str, Any]],
    experiment: str,
    metric: str,
    head: str = "model",
) -> Table:
    """Loss x test distribution table of one metric, mean [95 % interval] over seeds."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    own = [r for r in records if r["experiment"] == experiment]
    tests = [t for t in tests_present(own) if not (t in ONE_GROUP_TESTS and metric in BOTH_CLASSES)]
    rows = tuple(
        (loss, *(cell(metric_interval(runs, t, metric, head)) for t in tests))
        for loss, runs in runs_by_loss.items()
    )
    return Table(
        f"**{METRIC_TITLES[metric]}**, {HEAD_TITLES[head]} (mean [95 % interval] over seeds)",
        ("loss", *tests),
        rows,
    )


def group_table(config: StudyConfig, records: list[dict[str, Any]], experiment: str) -> Table:
    """Accuracy of each (label x shortcut side) group on the headline test distribution."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    rows = []
    for loss, runs in runs_by_loss.items():
        cells = []
        for group in GROUPS:
            values = [
                r["metrics"][HEADLINE_TEST]["group_accuracy"].get(group)
                for r in runs
                if HEADLINE_TEST in r["metrics"]
            ]
            cells.append(cell(interval(values)))
        rows.append((loss, *cells))
    return Table(
        f"**Accuracy per group** on `{HEADLINE_TEST}` (aligned: the shortcut agrees "
        "with the label; conflicting: it disagrees)",
        ("loss", *GROUPS),
        tuple(rows),
    )


def error_set_table(
    config: StudyConfig, records: list[dict[str, Any]], experiment: str
) -> Table | None:
    """Precision and recall of the identification model's error set (JTT's, CnC's)."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    rows = []
    for loss, runs in runs_by_loss.items():
        sets = [r["error_set"] for r in runs if "error_set" in r]
        if sets:
            rows.append(
                (
                    loss,
                    cell(interval(e["size"] for e in sets), digits=0),
                    cell(interval(e["precision"] for e in sets)),
                    cell(interval(e["recall"] for e in sets)),
                )
            )
    if not rows:
        return None
    return Table(
        "**The identification model's error set** against the conflicting groups it "
        "stands in for (JTT upweights it, `group_dro_inferred` groups by it; CnC reads the "
        "same model): precision, the share of errors that are conflicting; recall, the "
        "share of conflicting training images that are errors. The identification model "
        "is trained once per (experiment, seed), so the losses of one seed share it.",
        ("loss", "size", "precision", "recall"),
        tuple(rows),
    )


def factor_table(config: StudyConfig, records: list[dict[str, Any]], experiment: str) -> Table:
    """Worst-group accuracy on the headline test with the groups of every shortcut factor."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    factors = list(dict.fromkeys(e.shortcut for e in config.experiments))
    rows = tuple(
        (loss, *(cell(interval(control_by_factor(runs, f).values())) for f in factors))
        for loss, runs in runs_by_loss.items()
    )
    return Table(
        f"**Worst-group accuracy on `{HEADLINE_TEST}` with the groups of each shortcut "
        "factor** (label x side of that factor's split): the baseline each shortcut "
        "experiment is compared with.",
        ("loss", *(f"`{f}`" for f in factors)),
        rows,
    )


def heads_table(config: StudyConfig, records: list[dict[str, Any]], experiment: str) -> Table:
    """Worst-group accuracy of the three heads on one encoder: used vs decodable."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    rows = tuple(
        (
            loss,
            STUDY_LOSSES[loss].protocol,
            *(cell(metric_interval(runs, HEADLINE_TEST, HEADLINE_METRIC, head)) for head in HEADS),
        )
        for loss, runs in runs_by_loss.items()
    )
    return Table(
        f"**Worst-group accuracy on `{HEADLINE_TEST}` by head**: the protocol's "
        "head shows what the model *uses*; a linear head refit on the biased training "
        "set is the two-stage protocol; the DFR head, refit on a small group-balanced "
        "set, shows what the encoder makes *decodable*.",
        ("loss", "protocol", *(HEAD_TITLES[h] for h in HEADS)),
        rows,
    )


def selection_table(config: StudyConfig, records: list[dict[str, Any]], experiment: str) -> Table:
    """Worst-group accuracy of the model each selection regime chose, side by side."""
    from .training import SELECTION_REGIMES

    runs_by_loss = _losses(config, group_runs(records), experiment)
    rows = []
    for loss, runs in runs_by_loss.items():
        cells = [cell(metric_interval(runs, HEADLINE_TEST, HEADLINE_METRIC))]
        for regime in SELECTION_REGIMES:
            chosen = [r["selection"][regime] for r in runs if regime in r.get("selection", {})]
            value = interval(
                c["metrics"].get(HEADLINE_TEST, {}).get(HEADLINE_METRIC) for c in chosen
            )
            epochs = ", ".join(str(c["epoch"]) for c in chosen) or "—"
            cells.append(f"{cell(value)}; epochs {epochs}")
        rows.append((loss, *cells))
    return Table(
        f"**Worst-group accuracy on `{HEADLINE_TEST}` by model selection**: the last epoch, "
        "and the epoch each regime chose on the validation split (drawn from the training "
        "distribution; no test set informs a choice), with the chosen epoch of each seed.",
        ("loss", "last epoch", *SELECTION_REGIMES.values()),
        tuple(rows),
    )


def identification_tables(
    config: StudyConfig, cka: CkaTable, records: list[dict[str, Any]], experiment: str
) -> list[Table]:
    """Probe selectivity, intervention sensitivity, saliency density and CKA tables."""
    runs_by_loss = _losses(config, group_runs(records), experiment)
    probes = {
        loss: field_intervals(runs, "probes", "selectivity") for loss, runs in runs_by_loss.items()
    }
    factors = list(next(iter(probes.values()), {}))
    tables = [
        Table(
            "**Linear-probe selectivity** of the encoder output on the decorrelated distribution "
            "(score minus shuffled-target control; R² for continuous factors, balanced accuracy "
            "for categorical ones), mean [95 % interval] over seeds: what the features *encode*.",
            ("loss", *factors),
            tuple(
                (loss, *(cell(p.get(f), digits=2) for f in factors)) for loss, p in probes.items()
            ),
        )
    ]
    sens = {
        loss: field_intervals(runs, "sensitivity", "mean_abs_probability_change")
        for loss, runs in runs_by_loss.items()
    }
    sens_factors = list(next(iter(sens.values()), {}))
    tables.append(
        Table(
            "**Intervention sensitivity**: mean absolute change of the malignant probability "
            "when only that factor moves (10th to 90th percentile, or between categories), "
            "mean [95 % interval] over seeds: what the model *uses*.",
            ("loss", *sens_factors),
            tuple(
                (loss, *(cell(v.get(f), digits=2) for f in sens_factors))
                for loss, v in sens.items()
            ),
        )
    )
    density = {loss: saliency_intervals(runs) for loss, runs in runs_by_loss.items()}
    regions = list(next(iter(density.values()), {}))
    layers = sorted({run["saliency"]["layer"] for runs in runs_by_loss.values() for run in runs})
    tables.append(
        Table(
            f"**Saliency per area** (Grad-CAM at `{'`, `'.join(layers)}`): the region's "
            "share of the attribution over its share of the pixels; 1 = no preference, above 1 = "
            "drawn to the region. Mean [95 % interval] over seeds.",
            ("loss", *regions),
            tuple(
                (loss, *(cell(d.get(g), digits=2) for g in regions)) for loss, d in density.items()
            ),
        )
    )
    if cka:
        tables.append(
            Table(
                f"**Linear CKA (debiased) with {REFERENCE_LOSS}, minus the seed-to-seed floor**, "
                "stage by stage on unpooled features (same probe images; models of different "
                "seeds and initialisations in every pair). Below 0: the two losses' "
                "representations differ more than two seeds of one loss do. Floor in brackets "
                "after the interval.",
                ("loss", *STAGES),
                tuple(
                    (
                        loss,
                        *(
                            f"{cell(rows[s].excess, digits=2)}; floor "
                            f"{cell(rows[s].floor, digits=2)}"
                            for s in STAGES
                        ),
                    )
                    for loss, rows in cka.items()
                ),
            )
        )
    return tables


def _pair_text(pair: PairResult) -> str:
    c = pair.comparison
    better = pair.better
    worse = pair.b if better == pair.a else pair.a
    sign = 1 if better == pair.a else -1
    return (
        f"**{better}** > **{worse}** by {sign * c.difference:.3f} "
        f"[{min(sign * c.low, sign * c.high):.3f}, {max(sign * c.low, sign * c.high):.3f}] "
        f"(Holm-adjusted p = {pair.adjusted_p:.2g})"
    )


def comparison_findings(
    runs_by_loss: dict[str, list[dict[str, Any]]],
    test: str,
    metric: str = HEADLINE_METRIC,
    head: str = "model",
    not_fit: dict[str, float] | None = None,
) -> list[str]:
    """What a paired, Holm-corrected comparison of the losses supports — and nothing more.

    Every loss is compared. ``not_fit`` (``{loss: control balanced accuracy}``, from
    :func:`~study.analysis.not_fit_losses`) names the losses that did not fit the
    no-shortcut control; each also gets its own paired comparison with
    :data:`~study.analysis.REFERENCE_LOSS`, since a model that learned little can look
    robust without being so.
    """
    title = f"{METRIC_TITLES[metric]} on `{test}`"
    lines = []
    pairs, n = compare_losses(runs_by_loss, test, metric, head)
    if len(runs_by_loss) < 2:
        lines.append(f"{title}: fewer than two losses; nothing to compare.")
    elif n < 2:
        lines.append(f"{title}: {n} seed(s) per loss; no comparison is possible.")
    else:
        rejected = [p for p in pairs if p.rejected]
        if not rejected:
            lines.append(
                f"{title}: the {len(runs_by_loss)} losses are indistinguishable with {n} seeds "
                f"(no Holm-corrected paired t-test over {len(pairs)} pairs rejects at "
                f"{ALPHA})."
            )
        else:
            lines.append(
                f"{title}, paired by seed ({n} seeds), Holm-corrected over "
                f"{len(pairs)} pairs: "
                + "; ".join(_pair_text(p) for p in rejected)
                + f". Every other pair is indistinguishable with {n} seeds."
            )
    shown = {loss: v for loss, v in (not_fit or {}).items() if loss in runs_by_loss}
    if shown:
        lines.append(not_fit_line(runs_by_loss, test, metric, head, shown))
    return lines


def not_fit_line(
    runs_by_loss: dict[str, list[dict[str, Any]]],
    test: str,
    metric: str,
    head: str,
    not_fit: dict[str, float],
) -> str:
    """The not-fit losses, each compared with the reference loss (paired, Holm over them)."""
    named = ", ".join(f"**{loss}** ({value:.3f})" for loss, value in not_fit.items())
    text = (
        f"Not fit in the no-shortcut control (balanced accuracy on its `{FIT_TEST}` test more "
        f"than {FIT_MARGIN} below the best loss's there): {named}. They stay in every table "
        "and comparison; a model that learned little can look robust, so each is also "
        f"compared with {REFERENCE_LOSS} alone"
    )
    reference = metric_by_seed(runs_by_loss.get(REFERENCE_LOSS, []), test, metric, head)
    rows = []
    for loss in not_fit:
        if loss == REFERENCE_LOSS:
            continue
        own = metric_by_seed(runs_by_loss[loss], test, metric, head)
        seeds = sorted(set(own) & set(reference))
        if len(seeds) >= 2:
            rows.append(
                (loss, paired_comparison([own[s] for s in seeds], [reference[s] for s in seeds]))
            )
    if not rows:
        return text + f": fewer than two seeds shared with {REFERENCE_LOSS}, no comparison."
    adjusted = holm([c.p_value for _, c in rows])
    return (
        text + f" ({METRIC_TITLES[metric].lower()} on `{test}`, minus {REFERENCE_LOSS}'s, paired "
        "by seed, Holm over these losses): "
        + "; ".join(
            f"{loss} {c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}] (p = {p:.2g})"
            for (loss, c), p in zip(rows, adjusted, strict=True)
        )
        + "."
    )


def sensitivity_findings(
    runs_by_loss: dict[str, list[dict[str, Any]]],
    shortcut: str,
    control: dict[str, list[dict[str, Any]]] | None,
) -> list[str]:
    """Shortcut against cause sensitivity (paired by seed), and against the control.

    Every loss is read; those not fit in the control are named by :func:`findings`.
    """
    causal = causal_factor()
    rows = []
    for loss, runs in runs_by_loss.items():
        by_seed = {
            r["seed"]: {
                row["factor"]: row["mean_abs_probability_change"] for row in r["sensitivity"]
            }
            for r in runs
        }
        seeds = [s for s, v in by_seed.items() if shortcut in v and causal in v]
        if len(seeds) >= 2:
            rows.append(
                (
                    loss,
                    paired_comparison(
                        [by_seed[s][shortcut] for s in seeds], [by_seed[s][causal] for s in seeds]
                    ),
                )
            )
    lines = []
    if rows:
        adjusted = holm([c.p_value for _, c in rows])
        more = [
            loss
            for (loss, c), p in zip(rows, adjusted, strict=True)
            if p <= ALPHA and c.difference > 0
        ]
        lines.append(
            f"Intervention sensitivity to `{shortcut}` minus `{causal}` (paired by seed, Holm "
            "over losses): "
            + ", ".join(
                f"{loss} {c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}]" for loss, c in rows
            )
            + ". "
            + (
                f"Reacting more to the shortcut than to the cause: {', '.join(more)}."
                if more
                else "No loss reacts detectably more to the shortcut than to the cause."
            )
        )
    if control:
        above = []
        for loss, runs in runs_by_loss.items():
            here = field_intervals(runs, "sensitivity", "mean_abs_probability_change")
            base = field_intervals(
                control.get(loss, []), "sensitivity", "mean_abs_probability_change"
            )
            h, b = here.get(shortcut), base.get(shortcut)
            if h and b and h.low is not None and b.high is not None and h.low > b.high:
                above.append(loss)
        lines.append(
            f"Against the no-shortcut control (every factor at strength 0), whose sensitivity to "
            f"`{shortcut}` is what its visibility alone causes: "
            + (
                f"{', '.join(above)} react more to it (95 % intervals disjoint)."
                if above
                else "no loss reacts more to it with disjoint 95 % intervals."
            )
        )
    return lines


def control_line(
    runs_by_loss: dict[str, list[dict[str, Any]]],
    control: dict[str, list[dict[str, Any]]],
    factor: str,
) -> str:
    """Worst-group accuracy here against the control read with the groups of ``factor``."""
    below, above = [], []
    for loss, runs in runs_by_loss.items():
        here = metric_interval(runs, HEADLINE_TEST, HEADLINE_METRIC)
        base = interval(control_by_factor(control.get(loss, []), factor).values())
        if here is None or base is None or None in (here.low, here.high, base.low, base.high):
            continue
        if here.high < base.low:  # type: ignore[operator]
            below.append(f"{loss} ({here.mean:.3f} against {base.mean:.3f})")
        elif here.low > base.high:  # type: ignore[operator]
            above.append(f"{loss} ({here.mean:.3f} against {base.mean:.3f})")
    text = (
        f"Worst-group accuracy on `{HEADLINE_TEST}` against the no-shortcut control read "
        f"with the groups of `{factor}` (same loss, 95 % intervals over seeds): "
    )
    if not below and not above:
        return text + "no loss differs from its control with disjoint intervals."
    parts = []
    if below:
        parts.append("below its control: " + ", ".join(below))
    if above:
        parts.append("above its control: " + ", ".join(above))
    return text + "; ".join(parts) + "; the others within their control's interval."


def control_experiment(config: StudyConfig) -> ExperimentConfig | None:
    """The study's no-shortcut control: its first experiment at strength 0 (or none)."""
    return next((e for e in config.experiments if e.strength == 0.0), None)


def findings(
    config: StudyConfig, cka: CkaTable, records: list[dict[str, Any]], experiment: ExperimentConfig
) -> list[str]:
    """Plain sentences computed from the numbers (no claim that the tests don't carry)."""
    groups = group_runs(records)
    runs_by_loss = _losses(config, groups, experiment.name)
    control = control_experiment(config)
    control_runs = _losses(config, groups, control.name) if control else None
    not_fit = not_fit_losses(control_runs) if control_runs else {}
    lines = comparison_findings(runs_by_loss, HEADLINE_TEST, not_fit=not_fit)
    if control is None:
        lines.append(
            "No no-shortcut control in this study: whether each loss fits the task is not "
            "judged (an i.i.d. test of a shortcut experiment would reward the shortcut)."
        )
    if "covariate" in tests_present([r for r in records if r["experiment"] == experiment.name]):
        lines += comparison_findings(runs_by_loss, "covariate")
    gains = dfr_gains(runs_by_loss)
    if gains:
        moved = [g for g in gains if g.adjusted_p <= ALPHA]
        text = "; ".join(
            f"{g.loss} {g.difference:+.3f} [{g.low:+.3f}, {g.high:+.3f}]" for g in moved
        )
        lines.append(
            f"Last-layer retraining on the group-balanced set (DFR) changes worst-group "
            f"accuracy on `{HEADLINE_TEST}` detectably (paired, Holm over losses) for: "
            + (text + "; for the others the change is within the noise." if moved else "no loss.")
        )
    if control is not None and control.name == experiment.name:
        control_runs = None  # the control is not compared with itself
    lines += sensitivity_findings(runs_by_loss, experiment.shortcut, control_runs)
    if control_runs:
        lines.append(control_line(runs_by_loss, control_runs, experiment.shortcut))
    differing = {
        loss: [
            s
            for s, row in rows.items()
            if row.excess is not None and row.excess.high is not None and row.excess.high < 0
        ]
        for loss, rows in cka.items()
    }
    if any(
        row.excess is not None and row.excess.high is not None
        for rows in cka.values()
        for row in rows.values()
    ):
        named = [f"{loss} at {', '.join(stages)}" for loss, stages in differing.items() if stages]
        lines.append(
            f"Representations (debiased linear CKA with {REFERENCE_LOSS}): "
            + (
                f"below the seed-to-seed floor (95 % interval under 0) for {'; '.join(named)}; "
                "elsewhere within the floor."
                if named
                else "no loss differs from it by more than two seeds of one loss differ, at any "
                "stage."
            )
        )
    return lines


def protocol_blocks(
    config: StudyConfig, records: list[dict[str, Any]], machine: str
) -> list[Block]:
    """What was run, on what, and the honest note on the paper's unpublished details."""
    seconds = sum(r["total_seconds"] for r in records)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    experiments = "; ".join(
        f"`{e.name}`: `{e.shortcut}` at strength {e.strength:g}" for e in config.experiments
    )
    return [
        Paragraph(
            f"nodulebench {nodulebench.__version__}, preset `{config.name}`: {len(records)} runs "
            f"({len(config.experiments)} training distributions x {len(config.losses)} losses x "
            f"{len(config.seeds)} seeds), {seconds / 60:.1f} min of run time on {machine}; "
            f"written {now}."
        ),
        Paragraph(
            "A faithful re-design of the protocol of Baltatzis et al., *The Effect of the Loss "
            "on Generalization: Empirical Study on Synthetic Lung Nodule Data* (iMIMIC 2021). "
            "The paper's generator parameters, architecture and result tables are not public, "
            "so these numbers are ours, not a copy of theirs."
        ),
        Heading(2, "Protocol"),
        Bullets(
            (
                f"Data: SyntheticNodules, {_sample_size(config)}; "
                f"{config.data.n_train} training {_samples(config)} per (experiment, seed), "
                f"{config.data.n_test} per test distribution; malignant iff `{causal_factor()}` "
                "passes the default threshold (the causal factor).",
                f"Training distributions: {experiments}. Every shortcut factor of the study is "
                "split in every experiment, each half on either side; only the experiment's "
                "own factor is tied to the label, so every experiment has the control's "
                "marginals. Strength 0 is the no-shortcut control: it is read with the groups "
                "of every shortcut factor, and its i.i.d., decorrelated and reversed "
                "distributions being one, it is tested once (as `decorrelated`).",
                f"Model: `{config.model.arch}` (width {config.model.width}), initialised "
                "independently for every (loss, seed). Embedding losses train encoder + projection "
                "head on two views, two rescans of each nodule (new acquisition noise, same "
                "factors) each flipped/rotated at random, then a linear classifier on the frozen "
                "encoder "
                "(the SupCon protocol); `cross_entropy` trains end to end on one view and "
                "`cross_entropy_2view` on the same two views as the embedding losses; `supcon_ce` "
                "trains SupCon and cross-entropy jointly; `ntxent` ignores labels.",
                "Heads: every encoder is also read with a linear head refit on the frozen features "
                "of the biased training set (the two-stage protocol for every loss) and with one "
                f"refit on {config.data.n_dfr} images of the decorrelated distribution, where the "
                "four (label x shortcut side) groups are equally large (DFR, Kirichenko et al. "
                "2022).",
                f"Training: {config.train.epochs} epochs, batch {config.train.batch_size}, AdamW "
                f"with a one-cycle schedule to lr {config.train.lr}; seeds {list(config.seeds)}. "
                "The seed fixes the data, the batch order and the views, so the losses of one seed "
                "are compared on the same data (paired).",
                f"Model selection: {config.data.n_val} validation {_samples(config)} per "
                "(experiment, seed), drawn from the training distribution with their group "
                "labels and never trained on, are scored after every epoch (batch norm in eval "
                "mode; a two-stage loss through a linear head fit on training features). Two "
                "regimes each keep the epoch they choose, reported side by side with the last "
                "epoch: best validation accuracy (no group labels) and best validation "
                "worst-group accuracy (group labels), as Sagawa et al. (2020) report them. "
                "No test set informs any choice.",
                "Headline metric: worst-group accuracy over the four (label x shortcut side) "
                f"groups (Sagawa et al. 2020), compared on `{HEADLINE_TEST}`. A group's accuracy "
                "does not depend on how common the group is, so `iid`, `decorrelated` and "
                "`reversed` differ in it only by sampling noise; `decorrelated` has the largest "
                "smallest group.",
                "Statistics: every cell is a mean over seeds with its 95 % Student-t interval. Two "
                "losses are called different only where a paired t-test over seeds rejects at "
                f"{ALPHA} after Holm's correction over all pairs of one family. Every loss "
                "stays in every table and comparison.",
                "Fit criterion: a loss whose balanced accuracy on the no-shortcut control's "
                f"`{FIT_TEST}` test is more than {FIT_MARGIN} below the best loss's there is "
                "named not fit, and gets its own paired comparison with "
                f"{REFERENCE_LOSS}. The control has no shortcut to exploit, so no shortcut "
                "can inflate the criterion; the i.i.d. test of a shortcut experiment would "
                "reward the shortcut and flag exactly the losses that refuse it.",
                "Test distributions: "
                + "; ".join(f"`{k}`: {v}" for k, v in TEST_MEANINGS.items())
                + ".",
            )
        ),
    ]


def experiment_blocks(
    config: StudyConfig,
    cka: CkaTable,
    records: list[dict[str, Any]],
    experiment: ExperimentConfig,
    figures: dict[str, Any],
) -> list[Block]:
    """Findings, metric tables, identification tables and figures of one experiment."""
    name = experiment.name
    title = (
        f"Experiment `{name}`: no-shortcut control (every shortcut factor of the study "
        "independent of the label)"
        if experiment.strength == 0
        else f"Experiment `{name}`: `{experiment.shortcut}` tied to the label at "
        f"strength {experiment.strength:g}"
    )
    blocks: list[Block] = [
        Heading(2, title),
        Figure(figures["samples"], f"samples of every distribution, {name}"),
        Heading(3, "What the numbers support"),
        Bullets(tuple(findings(config, cka, records, experiment))),
        Heading(3, "Generalization"),
        Figure(figures["worst_group"], f"worst-group accuracy with 95 % intervals, {name}"),
        metric_table(config, records, name, HEADLINE_METRIC),
        group_table(config, records, name),
        heads_table(config, records, name),
        selection_table(config, records, name),
    ]
    if "curves" in figures:
        blocks.append(Figure(figures["curves"], f"training curves, {name}"))
    if experiment.strength == 0:
        blocks.append(factor_table(config, records, name))
    errors = error_set_table(config, records, name)
    if errors is not None:
        blocks.append(errors)
    blocks += [
        metric_table(config, records, name, metric)
        for metric in METRIC_TITLES
        if metric != HEADLINE_METRIC
    ]
    blocks.append(Heading(3, "Which features each loss learned"))
    blocks += identification_tables(config, cka, records, name)
    blocks += [Figure(figures["sensitivity"], f"intervention sensitivity, {name}")]
    if "cka" in figures:
        blocks.append(Figure(figures["cka"], f"CKA minus the seed floor by stage, {name}"))
    blocks.append(
        Paragraph(
            f"Illustrations from seed {config.seeds[0]} (one model each, no "
            "interval): encoder outputs (PCA) and Grad-CAM overlays (contour: "
            "spicule mask)."
        )
    )
    blocks.append(Figure(figures["embeddings"], f"embeddings, {name}"))
    blocks += [
        Figure(path, f"Grad-CAM, {name}, {loss}") for loss, path in figures["saliency"].items()
    ]
    return blocks


def report_blocks(
    config: StudyConfig,
    cka: dict[str, CkaTable],
    records: list[dict[str, Any]],
    figures: dict[str, dict[str, Any]],
    machine: str,
    missing: Sequence[str] = (),
) -> list[Block]:
    """The whole report; ``missing`` names the runs not finished yet (none: complete)."""
    blocks: list[Block] = [
        Heading(1, f"The effect of the loss on generalization: study report ({config.name})")
    ]
    if missing:
        shown = ", ".join(f"`{rid}`" for rid in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        blocks.append(
            Paragraph(
                f"**Incomplete: {len(missing)} of {len(records) + len(missing)} runs have not "
                f"finished** ({shown}{more}); every number below comes from the finished "
                "runs alone. Rerun the report once every shard has finished."
            )
        )
    blocks += protocol_blocks(config, records, machine)
    blocks += contrast_blocks(config, records)
    if "_sweeps" in figures:
        blocks.append(Heading(2, "Shortcut strength"))
        blocks += [
            Figure(path, f"worst-group accuracy against strength, {shortcut}")
            for shortcut, path in figures["_sweeps"].items()
        ]
    for experiment in config.experiments:
        if experiment.name in figures:
            blocks += experiment_blocks(
                config, cka[experiment.name], records, experiment, figures[experiment.name]
            )
    return blocks


def _sample_size(config: StudyConfig) -> str:
    """``32x32 px`` for images, ``16x16x16 voxel volumes`` for volumes."""
    size = config.data.image_size
    if config.data.dims == 3:
        return f"{size}x{size}x{size} voxel volumes"
    return f"{size}x{size} px"


def _samples(config: StudyConfig) -> str:
    return "volumes" if config.data.dims == 3 else "images"


def contrast_blocks(config: StudyConfig, records: list[dict[str, Any]]) -> list[Block]:
    """The primary contrasts: a paragraph on the design, then one table per experiment."""
    contrasts = primary_contrasts(config, records)
    if not contrasts:
        return []
    detectable = sorted(c.verdict.detectable for c in contrasts if c.verdict.detectable > 0)
    typical = (
        f" With these seeds the median detectable difference of a contrast is "
        f"{detectable[len(detectable) // 2]:.2f} (at the observed spread, {POWER:.0%} power, "
        "Bonferroni's bound on Holm): a smaller true difference is likely to be missed."
        if detectable
        else ""
    )
    blocks: list[Block] = [
        Heading(2, "Primary contrasts"),
        Paragraph(
            "Declared before the runs, on worst-group accuracy on "
            f"`{HEADLINE_TEST}`: (a) each method against `{REFERENCE_LOSS}`, paired by seed; "
            "(b) each method's shortcut penalty, its worst-group accuracy in the shortcut "
            "experiment minus its own in the no-shortcut control read with the same factor's "
            f"groups. Each family is Holm-corrected over the methods at {ALPHA}. A contrast "
            "that is not significant is called equivalent only when two one-sided tests put "
            f"it within +-{EQUIVALENCE_MARGIN}; otherwise it is inconclusive, with the "
            "difference the design could have detected." + typical + " Every other "
            "comparison in this report is exploratory."
        ),
    ]
    by_key = {(c.family, c.experiment, c.loss): c for c in contrasts}
    reference_family = f"against {REFERENCE_LOSS}"
    for experiment in dict.fromkeys(c.experiment for c in contrasts):
        rows = []
        for loss in config.losses:
            against = by_key.get((reference_family, experiment, loss))
            penalty = by_key.get(("shortcut penalty", experiment, loss))
            if against is None and penalty is None:
                continue
            rows.append(
                (
                    loss,
                    _difference(against),
                    "" if against is None else f"{against.verdict.comparison.effect_size:+.2f}",
                    "" if against is None else f"{against.verdict.p_value:.2g}",
                    "" if against is None else against.verdict.summary,
                    _difference(penalty),
                    "" if penalty is None else penalty.verdict.summary,
                )
            )
        blocks.append(
            Table(
                f"Primary contrasts, `{experiment}` (differences with 95 % intervals over "
                "seeds; d_z = mean difference / its standard deviation)",
                (
                    "loss",
                    f"minus {REFERENCE_LOSS}",
                    "d_z",
                    "p (Holm)",
                    "verdict",
                    "shortcut penalty",
                    "verdict",
                ),
                tuple(rows),
            )
        )
    return blocks


def _difference(contrast: Contrast | None) -> str:
    if contrast is None:
        return ""
    c = contrast.verdict.comparison
    return f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
