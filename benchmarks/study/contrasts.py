"""The study's primary contrasts, fixed before any run, each with a verdict.

Two families per shortcut experiment, each Holm-corrected over the methods:

* **against cross-entropy**: each method's worst-group accuracy on ``decorrelated`` minus
  cross-entropy's, paired by seed;
* **shortcut penalty**: each method's worst-group accuracy in the shortcut experiment
  minus its own in the no-shortcut control read with the same factor's groups, paired by
  seed.

A contrast that is not significant is called equivalent only when the two one-sided tests
put it inside :data:`EQUIVALENCE_MARGIN`; otherwise it is inconclusive, with the difference
the design could have detected (:func:`nodulebench.stats.verdict`). Everything else in the
report (all-pairs comparisons) is exploratory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodulebench.stats import Verdict, holm, paired_comparison, verdict

from .analysis import (
    ALPHA,
    HEADLINE_METRIC,
    HEADLINE_TEST,
    REFERENCE_LOSS,
    control_by_factor,
    group_runs,
    metric_by_seed,
)
from .config import ExperimentConfig, StudyConfig

#: Differences of worst-group accuracy within this margin count as equivalent (declared
#: before the runs; five points of accuracy).
EQUIVALENCE_MARGIN = 0.05
#: The power at which the detectable difference of an inconclusive contrast is stated.
POWER = 0.8


@dataclass(frozen=True)
class Contrast:
    """One primary contrast of one method in one experiment."""

    family: str  # "against cross_entropy" or "shortcut penalty"
    experiment: str
    loss: str
    verdict: Verdict


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _family(
    family: str, experiment: str, pairs: dict[str, tuple[list[float], list[float]]]
) -> list[Contrast]:
    """Verdicts of one Holm family (pairs with fewer than two seeds are left out)."""
    pairs = {loss: ab for loss, ab in pairs.items() if len(ab[0]) >= 2}
    if not pairs:
        return []
    raw = [paired_comparison(a, b).p_value for a, b in pairs.values()]
    adjusted = holm(raw)
    return [
        Contrast(
            family,
            experiment,
            loss,
            verdict(
                a,
                b,
                margin=EQUIVALENCE_MARGIN,
                alpha=ALPHA,
                power=POWER,
                comparisons=len(pairs),
                p_value=p,
            ),
        )
        for (loss, (a, b)), p in zip(pairs.items(), adjusted, strict=True)
    ]


def primary_contrasts(config: StudyConfig, records: list[dict[str, Any]]) -> list[Contrast]:
    """Both families of every shortcut experiment, in the config's loss order."""
    groups = group_runs(records)
    control: ExperimentConfig | None = next(
        (e for e in config.experiments if e.strength == 0), None
    )
    out: list[Contrast] = []
    for experiment in config.experiments:
        if experiment.strength == 0:
            continue
        name = experiment.name

        def headline(loss: str, name: str = name) -> dict[int, float]:
            return metric_by_seed(groups.get((name, loss), []), HEADLINE_TEST, HEADLINE_METRIC)

        reference = headline(REFERENCE_LOSS)
        out += _family(
            f"against {REFERENCE_LOSS}",
            name,
            {
                loss: _paired(headline(loss), reference)
                for loss in config.losses
                if loss != REFERENCE_LOSS and (name, loss) in groups
            },
        )
        if control is not None:
            out += _family(
                "shortcut penalty",
                name,
                {
                    loss: _paired(
                        headline(loss),
                        control_by_factor(
                            groups.get((control.name, loss), []), experiment.shortcut
                        ),
                    )
                    for loss in config.losses
                    if (name, loss) in groups
                },
            )
    return out
