"""The study's narrative on planted metrics: planted differences are reported, nulls are not."""

from __future__ import annotations

from typing import Any

import numpy as np

from nodulebench.stats import mean_interval
from study.analysis import cka_against_floor, not_fit_losses
from study.narrative import cell, comparison_findings, sensitivity_findings
from study.runner import causal_factor, run_id


def runs(loss: str, iid: list[float], worst: list[float]) -> list[dict[str, Any]]:
    return [
        {
            "loss": loss,
            "seed": seed,
            "experiment": "e",
            "metrics": {
                "iid": {"balanced_accuracy": b, "worst_group_accuracy": w},
                "decorrelated": {"balanced_accuracy": b, "worst_group_accuracy": w},
            },
            "heads": {},
        }
        for seed, (b, w) in enumerate(zip(iid, worst, strict=True))
    ]


def planted(seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    luck = rng.normal(0.7, 0.05, 5)  # shared by every loss of a seed: paired data

    def noisy(shift: float) -> list[float]:
        return (luck + shift + rng.normal(0, 0.005, 5)).tolist()

    fit = [0.95] * 5
    return {
        "better": runs("better", fit, noisy(0.10)),
        "plain": runs("plain", fit, noisy(0.0)),
        "twin": runs("twin", fit, noisy(0.0)),
        # Highest worst-group accuracy, but it learned little: underfit, never "better".
        "lazy": runs("lazy", [0.90] * 5, noisy(0.2)),
    }


def test_planted_difference_is_reported_and_the_null_pair_is_not() -> None:
    text = " ".join(comparison_findings(planted(0), "decorrelated"))
    assert "**better** > **plain**" in text
    assert "**better** > **twin**" in text
    assert "**plain** > **twin**" not in text and "**twin** > **plain**" not in text
    assert "Every other pair is indistinguishable with 5 seeds" in text


def test_fit_is_read_in_the_control_and_a_not_fit_loss_stays_compared() -> None:
    """Planted: "lazy" fits the control worst yet has the highest worst-group accuracy.

    It stays in the comparison (so it can be called better) and gets its own comparison
    with cross-entropy; the shortcut experiment's i.i.d. accuracy plays no part.
    """
    by_loss = planted(1)
    by_loss["cross_entropy"] = by_loss.pop("plain")
    # The control: "lazy" is 0.10 below the others; in the shortcut experiment its i.i.d.
    # balanced accuracy (0.90) was the only low one, which must not matter.
    control = {
        loss: runs(loss, [0.85 if loss == "lazy" else 0.95] * 5, [0.6] * 5) for loss in by_loss
    }
    not_fit = not_fit_losses(control)
    assert not_fit == {"lazy": 0.85}
    findings = comparison_findings(by_loss, "decorrelated", not_fit=not_fit)
    assert "**lazy** > **cross_entropy**" in findings[0]
    assert findings[1].startswith("Not fit in the no-shortcut control")
    assert "**lazy** (0.850)" in findings[1] and "lazy +0.2" in findings[1]
    # A shortcut experiment's i.i.d. test does not decide fit: a shortcut-free control
    # where every loss fits flags none, whatever the i.i.d. numbers above.
    assert not_fit_losses({loss: runs(loss, [0.95] * 5, [0.6] * 5) for loss in by_loss}) == {}


def test_no_difference_gives_indistinguishable() -> None:
    rng = np.random.default_rng(3)
    luck = rng.normal(0.7, 0.05, 5)
    by_loss = {
        name: runs(name, [0.95] * 5, (luck + rng.normal(0, 0.01, 5)).tolist())
        for name in ("a", "b", "c")
    }
    [line] = comparison_findings(by_loss, "decorrelated")
    assert "the 3 losses are indistinguishable with 5 seeds" in line


def test_planted_nulls_are_rarely_reported() -> None:
    false = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        luck = rng.normal(0.7, 0.05, 5)
        by_loss = {
            name: runs(name, [0.95] * 5, (luck + rng.normal(0, 0.01, 5)).tolist())
            for name in ("a", "b", "c", "d")
        }
        false += any(">" in line for line in comparison_findings(by_loss, "decorrelated"))
    assert false <= 10  # Holm keeps the family-wise rate at 0.05 (binomial 100, 0.05)


def test_one_seed_gives_no_comparison_and_no_interval() -> None:
    by_loss = {name: runs(name, [0.95], [0.6]) for name in ("a", "b")}
    [line] = comparison_findings(by_loss, "decorrelated")
    assert "1 seed(s) per loss; no comparison is possible" in line
    assert cell(mean_interval([0.6])) == "0.600 (1 seed, no interval)"
    assert "±" not in cell(mean_interval([0.6, 0.7]))


def with_sensitivity(
    by_loss: dict[str, list[dict[str, Any]]],
    shortcut: str,
    planted: dict[str, tuple[float, float]],
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Each loss's runs with sensitivities ``(to the shortcut, to the cause)`` plus noise."""
    rng = np.random.default_rng(seed)
    for loss, runs_of_loss in by_loss.items():
        to_shortcut, to_cause = planted[loss]
        for run in runs_of_loss:
            run["sensitivity"] = [
                {
                    "factor": shortcut,
                    "mean_abs_probability_change": to_shortcut + rng.normal(0, 0.01),
                },
                {
                    "factor": causal_factor(),
                    "mean_abs_probability_change": to_cause + rng.normal(0, 0.01),
                },
            ]
    return by_loss


def test_shortcut_and_control_sensitivities_are_read_for_every_loss() -> None:
    """Planted: "hooked" and "lazy" react to the shortcut; "plain" reacts to the cause."""
    shortcut = "diameter_mm"
    planted_sens = {"hooked": (0.40, 0.10), "plain": (0.05, 0.30), "lazy": (0.60, 0.05)}
    by_loss = with_sensitivity(
        {
            "hooked": runs("hooked", [0.95] * 5, [0.6] * 5),
            "plain": runs("plain", [0.94] * 5, [0.6] * 5),
            "lazy": runs("lazy", [0.85] * 5, [0.6] * 5),
        },
        shortcut,
        planted_sens,
        seed=0,
    )
    # The control: every loss reacts little to the shortcut when it is not tied to the label.
    control = with_sensitivity(
        {loss: runs(loss, [0.95] * 5, [0.6] * 5) for loss in by_loss},
        shortcut,
        dict.fromkeys(by_loss, (0.05, 0.3)),
        seed=1,
    )
    shortcut_line, control_line = sensitivity_findings(by_loss, shortcut, control)
    assert "Reacting more to the shortcut than to the cause: hooked, lazy." in shortcut_line
    assert "hooked, lazy react more to it (95 % intervals disjoint)." in control_line


def _grams(features: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {stage: torch.from_numpy(f @ f.T) for stage, f in features.items()}


def test_cka_against_the_floor_on_planted_representations() -> None:
    """Loss "same" learns what the reference learns; loss "other" learns something else."""
    rng = np.random.default_rng(0)
    n, seeds = 40, [0, 1, 2, 3]
    shared = rng.normal(size=(n, 6))  # what both the reference and "same" encode
    different = rng.normal(size=(n, 6))  # what "other" encodes
    store: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for loss, signal in (("cross_entropy", shared), ("same", shared), ("other", different)):
            rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]  # another initialisation
            features = signal @ rotation + 0.3 * rng.normal(size=(n, 6))
            store[run_id("e", loss, seed)] = _grams(
                {s: features for s in ("stage1", "stage2", "stage3", "stage4", "pool")}
            )
    rows = cka_against_floor(store.get, "e", ["cross_entropy", "same", "other"], seeds)
    for stage in ("stage1", "pool"):
        same, other = rows["same"][stage], rows["other"][stage]
        assert same.excess is not None and other.excess is not None
        assert same.excess.low is not None and other.excess.high is not None
        assert same.excess.low < 0 < same.excess.high  # within the seed-to-seed floor
        assert other.excess.high < 0  # clearly below it
        assert other.floor is not None and other.floor.mean > 0.8


def test_each_shortcut_is_compared_with_the_control_read_with_its_groups() -> None:
    """Planted: "hooked" loses 0.3 of worst-group accuracy to the shortcut, "steady" none."""
    from study.narrative import control_line

    rng = np.random.default_rng(5)

    def with_factor(loss: str, worst: float, factor: str | None) -> list[dict[str, Any]]:
        out = runs(loss, [0.95] * 5, (worst + rng.normal(0, 0.01, 5)).tolist())
        for run in out:
            test = run["metrics"]["decorrelated"]
            if factor is not None:  # the control, read with the shortcut factor's groups
                test["by_factor"] = {factor: {"worst_group_accuracy": test["worst_group_accuracy"]}}
        return out

    here = {"hooked": with_factor("hooked", 0.5, None), "steady": with_factor("steady", 0.8, None)}
    control = {loss: with_factor(loss, 0.8, "calcification") for loss in here}
    line = control_line(here, control, "calcification")
    assert "groups of `calcification`" in line
    assert "below its control: hooked (" in line and "against 0.8" in line
    assert "steady" not in line
    # Read with another factor's groups, the control has no number: nothing is claimed.
    assert "no loss differs" in control_line(here, control, "site")
