"""Numbers derived from the finished runs: intervals over seeds, paired tests, CKA floors.

Every aggregate here is a :class:`~nodulebench.stats.MeanInterval` over seeds, or a
comparison whose p-value is Holm-corrected within its family.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nodulebench.probing import gram_linear_cka
from nodulebench.stats import (
    MeanInterval,
    PairResult,
    compare_all,
    holm,
    mean_interval,
    paired_comparison,
)

from .config import StudyConfig
from .models import STAGES
from .runner import run_id
from .store import RunStore

TEST_ORDER = (
    "iid",
    "decorrelated",
    "reversed",
    "malignant-conflicting",
    "benign-conflicting",
    "covariate",
)
#: Test sets of one group each (worst-group accuracy is that group's accuracy).
ONE_GROUP_TESTS = ("malignant-conflicting", "benign-conflicting")
REFERENCE_LOSS = "cross_entropy"
#: Worst-group accuracy is compared on the distribution where every group is equally
#: large; a group's accuracy does not depend on the group proportions, so iid, decorrelated
#: and reversed differ only by sampling noise, which is smallest here.
HEADLINE_TEST = "decorrelated"
HEADLINE_METRIC = "worst_group_accuracy"
#: A loss whose balanced accuracy in the no-shortcut control is this far below the best
#: loss's there is called not fit. The control's test has no shortcut to exploit, so no
#: shortcut can inflate the criterion (an i.i.d. test of a shortcut experiment would reward
#: the shortcut, and so flag exactly the methods that refuse it).
FIT_MARGIN = 0.03
#: The control's test distribution the fit criterion reads.
FIT_TEST = "decorrelated"
ALPHA = 0.05
HEADS = ("model", "linear", "dfr")


def interval(values: Iterable[float | None]) -> MeanInterval | None:
    """Mean and 95 % t-interval of the defined values (``None`` without any)."""
    defined = [float(v) for v in values if v is not None]
    return mean_interval(defined) if defined else None


def group_runs(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records grouped by (experiment, loss), seeds together in seed order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["seed"]):
        groups[record["experiment"], record["loss"]].append(record)
    return groups


def tests_present(records: list[dict[str, Any]]) -> list[str]:
    """Test distributions in the canonical order, then any others."""
    seen = {t for r in records for t in r["metrics"]}
    return [t for t in TEST_ORDER if t in seen] + sorted(seen - set(TEST_ORDER))


def head_metrics(record: dict[str, Any], head: str) -> dict[str, dict[str, Any]]:
    """``{test: metrics}`` of one head of a run (``model`` is the protocol's own)."""
    metrics: dict[str, dict[str, Any]] = (
        record["metrics"] if head == "model" else record["heads"][head]
    )
    return metrics


def metric_by_seed(
    runs: list[dict[str, Any]], test: str, metric: str, head: str = "model"
) -> dict[int, float]:
    """``{seed: value}`` of one metric of one head on one test distribution."""
    out = {}
    for run in runs:
        value = head_metrics(run, head).get(test, {}).get(metric)
        if value is not None:
            out[run["seed"]] = float(value)
    return out


def metric_interval(
    runs: list[dict[str, Any]], test: str, metric: str, head: str = "model"
) -> MeanInterval | None:
    """Mean and interval over seeds of one metric on one test distribution."""
    return interval(metric_by_seed(runs, test, metric, head).values())


def control_by_factor(runs: list[dict[str, Any]], factor: str) -> dict[int, float]:
    """``{seed: worst-group accuracy}`` of control runs read with the groups of ``factor``."""
    out = {}
    for run in runs:
        by_factor = run["metrics"].get(HEADLINE_TEST, {}).get("by_factor", {})
        value = by_factor.get(factor, {}).get(HEADLINE_METRIC)
        if value is not None:
            out[run["seed"]] = float(value)
    return out


def control_fit(control_runs_by_loss: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """``{loss: mean balanced accuracy}`` on the no-shortcut control's :data:`FIT_TEST`."""
    return {
        loss: m.mean
        for loss, runs in control_runs_by_loss.items()
        if (m := metric_interval(runs, FIT_TEST, "balanced_accuracy")) is not None
    }


def not_fit_losses(control_runs_by_loss: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """``{loss: control balanced accuracy}`` of losses more than :data:`FIT_MARGIN` below the best.

    Read in the no-shortcut control only: there a model that learned the cause is not
    outscored by one that learned a shortcut. A not-fit loss stays in every table and
    comparison; the report adds its own comparison with :data:`REFERENCE_LOSS`.
    """
    means = control_fit(control_runs_by_loss)
    if not means:
        return {}
    best = max(means.values())
    return {loss: v for loss, v in means.items() if v < best - FIT_MARGIN}


def _common_seeds(by_seed: dict[str, dict[int, float]]) -> list[int]:
    seeds: set[int] | None = None
    for values in by_seed.values():
        seeds = set(values) if seeds is None else seeds & set(values)
    return sorted(seeds or ())


def compare_losses(
    runs_by_loss: dict[str, list[dict[str, Any]]], test: str, metric: str, head: str = "model"
) -> tuple[list[PairResult], int]:
    """Paired comparisons of every pair of losses on the seeds they share, Holm-corrected.

    Returns:
        The pairs and the number of shared seeds (no pair below two seeds).
    """
    by_seed = {
        loss: metric_by_seed(runs, test, metric, head) for loss, runs in runs_by_loss.items()
    }
    seeds = _common_seeds(by_seed)
    if len(seeds) < 2 or len(by_seed) < 2:
        return [], len(seeds)
    return compare_all(
        {loss: [v[s] for s in seeds] for loss, v in by_seed.items()}, alpha=ALPHA
    ), len(seeds)


@dataclass(frozen=True)
class HeadGain:
    """DFR head against the protocol's head of one loss (Holm over the losses)."""

    loss: str
    difference: float
    low: float
    high: float
    adjusted_p: float
    n: int


def dfr_gains(
    runs_by_loss: dict[str, list[dict[str, Any]]],
    test: str = HEADLINE_TEST,
    metric: str = HEADLINE_METRIC,
) -> list[HeadGain]:
    """Worst-group accuracy of the DFR head minus the protocol's head, paired by seed."""
    rows = []
    for loss, runs in runs_by_loss.items():
        dfr = metric_by_seed(runs, test, metric, "dfr")
        own = metric_by_seed(runs, test, metric, "model")
        seeds = sorted(set(dfr) & set(own))
        if len(seeds) >= 2:
            rows.append((loss, paired_comparison([dfr[s] for s in seeds], [own[s] for s in seeds])))
    adjusted = holm([c.p_value for _, c in rows])
    return [
        HeadGain(loss, c.difference, c.low, c.high, p, c.n)
        for (loss, c), p in zip(rows, adjusted, strict=True)
    ]


def field_intervals(
    runs: list[dict[str, Any]], key: str, value: str, name: str = "factor"
) -> dict[str, MeanInterval]:
    """``{row[name]: interval of row[value]}`` over seeds for the list ``run[key]``."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for row in run[key]:
            if row.get(value) is not None:
                by_name[row[name]].append(float(row[value]))
    return {k: mean_interval(v) for k, v in by_name.items()}


def saliency_intervals(
    runs: list[dict[str, Any]], quantity: str = "energy_per_area"
) -> dict[str, MeanInterval]:
    """``{region: interval over seeds}`` of a saliency quantity."""
    by_region: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for region, value in run["saliency"].get(quantity, {}).items():
            by_region[region].append(float(value))
    return {k: mean_interval(v) for k, v in by_region.items()}


@dataclass(frozen=True)
class CkaRow:
    """CKA of one loss with the reference loss at one stage, against the same-loss floor.

    Attributes:
        cross: CKA of (loss, seed s) with (reference, seed s' != s), over seeds.
        floor: the within-loss CKA of (loss, s) with (loss, s'), averaged with the
            reference's: how similar two seeds (other data, other initialisation) of one
            loss already are.
        excess: ``cross - floor`` per seed: below zero, the losses differ more than seeds do.
    """

    cross: MeanInterval | None
    floor: MeanInterval | None
    excess: MeanInterval | None


GramLoader = Callable[[str], dict[str, torch.Tensor] | None]
#: ``{loss: {stage: CkaRow}}`` of one experiment.
CkaTable = dict[str, dict[str, CkaRow]]


def store_grams(store: RunStore) -> GramLoader:
    """A cached loader of a finished run's Gram matrices (``None`` if not finished)."""
    cache: dict[str, dict[str, torch.Tensor] | None] = {}

    def load(rid: str) -> dict[str, torch.Tensor] | None:
        if rid not in cache:
            if not store.is_done(rid):
                cache[rid] = None
            else:
                arrays = store.load_arrays(rid)
                cache[rid] = {
                    s: torch.from_numpy(arrays[f"gram.{s}"]).double()
                    for s in STAGES
                    if f"gram.{s}" in arrays
                }
        return cache[rid]

    return load


def cka_against_floor(
    grams: GramLoader,
    experiment: str,
    losses: Sequence[str],
    seeds: Sequence[int],
    reference: str = REFERENCE_LOSS,
) -> CkaTable:
    """``{loss: {stage: CkaRow}}``: CKA with the reference and the same-loss floor.

    Every model of an experiment is measured on the same probe images, so representations
    of any two runs are row-aligned. Initialisations differ per (loss, seed), so the floor
    is the similarity that training from another start alone leaves. Each pair of runs is
    measured once (the floors of the reference recur for every loss).
    """
    measured: dict[tuple[frozenset[str], str], float | None] = {}

    def cka(a: str, b: str, stage: str) -> float | None:
        key = (frozenset((a, b)), stage)
        if key not in measured:
            ga, gb = grams(a), grams(b)
            measured[key] = (
                None
                if ga is None or gb is None or stage not in ga or stage not in gb
                else gram_linear_cka(ga[stage], gb[stage], debiased=True)
            )
        return measured[key]

    def floor(loss: str, seed: int, stage: str) -> float | None:
        values = [
            cka(run_id(experiment, loss, seed), run_id(experiment, loss, other), stage)
            for other in seeds
            if other != seed
        ]
        defined = [v for v in values if v is not None]
        return sum(defined) / len(defined) if defined else None

    out: CkaTable = {}
    for loss in losses:
        if loss == reference:
            continue
        rows = {}
        for stage in STAGES:
            cross, floors, excess = [], [], []
            for seed in seeds:
                # Models of different seeds, like the floor's pairs (one seed: the same).
                others = [o for o in seeds if o != seed] or [seed]
                values = [
                    cka(run_id(experiment, loss, seed), run_id(experiment, reference, o), stage)
                    for o in others
                ]
                defined = [v for v in values if v is not None]
                c = sum(defined) / len(defined) if defined else None
                fl, fr = floor(loss, seed, stage), floor(reference, seed, stage)
                if c is None:
                    continue
                cross.append(c)
                if fl is not None and fr is not None:
                    floors.append((fl + fr) / 2)
                    excess.append(c - (fl + fr) / 2)
            rows[stage] = CkaRow(interval(cross), interval(floors), interval(excess))
        if any(r.cross is not None for r in rows.values()):
            out[loss] = rows
    return out


def study_cka(config: StudyConfig, store: RunStore) -> dict[str, CkaTable]:
    """``{experiment: CkaTable}``: :func:`cka_against_floor` for every experiment's runs."""
    grams = store_grams(store)
    return {
        e.name: cka_against_floor(grams, e.name, config.losses, config.seeds)
        for e in config.experiments
    }
