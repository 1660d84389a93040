"""Numbers derived from the finished runs: means over seeds and CKA between losses."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from nodulebench.probing import ProbeResult, SensitivityResult, linear_cka

from .config import StudyConfig
from .models import STAGES
from .runner import run_id
from .store import RunStore

TEST_ORDER = ("iid", "decorrelated", "reversed", "heldout", "covariate")
REFERENCE_LOSS = "cross_entropy"


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the defined values.

    The mean is ``None`` without any defined value; the deviation is ``None`` with fewer
    than two.
    """
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return None, None
    return statistics.fmean(defined), statistics.stdev(defined) if len(defined) > 1 else None


def group_runs(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records grouped by (experiment, loss), seeds together."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["experiment"], record["loss"]].append(record)
    return groups


def tests_present(records: list[dict[str, Any]]) -> list[str]:
    """Test distributions in the canonical order, then any others."""
    seen = {t for r in records for t in r["metrics"]}
    return [t for t in TEST_ORDER if t in seen] + sorted(seen - set(TEST_ORDER))


def metric_means(runs: list[dict[str, Any]], test: str, metric: str) -> tuple[float | None,
                                                                               float | None]:
    """Mean ± std over seeds of one metric on one test distribution."""
    return mean_std(r["metrics"][test][metric] for r in runs if test in r["metrics"])


def mean_probes(runs: list[dict[str, Any]]) -> list[ProbeResult]:
    """Probe records averaged over seeds (score, control and selectivity)."""
    by_factor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        for row in run["probes"]:
            by_factor[row["factor"]].append(row)
    averaged = []
    for rows in by_factor.values():
        fields = dict(rows[0])
        for key in ("score", "score_std", "control", "control_std", "selectivity"):
            fields[key] = statistics.fmean(r[key] for r in rows)
        averaged.append(ProbeResult(**fields))
    return averaged


def mean_sensitivity(runs: list[dict[str, Any]]) -> list[SensitivityResult]:
    """Sensitivity records averaged over seeds."""
    by_factor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        for row in run["sensitivity"]:
            by_factor[row["factor"]].append(row)
    averaged = []
    for rows in by_factor.values():
        fields = dict(rows[0])
        fields["values"] = tuple(fields["values"])
        for key in ("flip_rate", "mean_abs_probability_change", "mean_probability_change",
                    "embedding_displacement", "relative_embedding_displacement"):
            fields[key] = mean_std(r[key] for r in rows)[0]
        averaged.append(SensitivityResult(**fields))
    return averaged


def cka_by_layer(config: StudyConfig, store: RunStore, experiment: str,
                 reference: str = REFERENCE_LOSS) -> dict[str, dict[str, float]]:
    """``{loss: {layer: CKA with the reference loss's model}}``, mean over seeds.

    Both models of a pair saw the same probe images (same experiment and seed), so their
    features are row-aligned.
    """
    result: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in config.seeds:
        ref_id = run_id(experiment, reference, seed)
        if not store.is_done(ref_id):
            continue
        _, ref_arrays = store.load(ref_id)
        for loss in config.losses:
            rid = run_id(experiment, loss, seed)
            if loss == reference or not store.is_done(rid):
                continue
            _, arrays = store.load(rid)
            for layer in STAGES:
                x = torch.from_numpy(ref_arrays[f"features.{layer}"]).double()
                y = torch.from_numpy(arrays[f"features.{layer}"]).double()
                result[loss][layer].append(linear_cka(x, y))
    return {loss: {layer: statistics.fmean(v) for layer, v in layers.items()}
            for loss, layers in result.items()}
