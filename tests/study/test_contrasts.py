"""Primary contrasts on planted records: a planted effect is "different", a planted null
within the margin is "equivalent", and a noisy null is "inconclusive" with its detectable
difference."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nodulebench.stats import minimal_detectable_difference
from study.config import load_config, preset_path
from study.contrasts import EQUIVALENCE_MARGIN, primary_contrasts
from study.narrative import contrast_blocks

SEEDS = 8


def record(experiment: str, loss: str, seed: int, worst: float, control: bool) -> dict[str, Any]:
    test: dict[str, Any] = {"worst_group_accuracy": worst, "balanced_accuracy": 0.9}
    if control:  # the control read with the shortcut factor's groups
        test["by_factor"] = {"diameter_mm": {"worst_group_accuracy": worst}}
    return {
        "experiment": experiment,
        "loss": loss,
        "seed": seed,
        "metrics": {"decorrelated": test},
        "heads": {},
    }


def planted() -> tuple[Any, list[dict[str, Any]]]:
    config = load_config(preset_path("quick"))
    experiments = tuple(e for e in config.experiments if e.name in ("control", "diameter"))
    losses = ("cross_entropy", "group_dro", "supcon", "ntxent")
    config = dataclasses.replace(
        config, experiments=experiments, losses=losses, seeds=tuple(range(SEEDS))
    )
    rng = np.random.default_rng(0)
    luck = rng.normal(0.6, 0.05, SEEDS)  # shared by the losses of a seed
    shift = {"cross_entropy": 0.0, "group_dro": 0.15, "supcon": 0.0, "ntxent": 0.0}
    noise = {"cross_entropy": 0.002, "group_dro": 0.002, "supcon": 0.01, "ntxent": 0.2}
    records = []
    for loss in losses:
        values = luck + shift[loss] + rng.normal(0, noise[loss], SEEDS)
        records += [record("diameter", loss, s, float(v), False) for s, v in enumerate(values)]
        # The control: every loss 0.2 above its shortcut experiment, but for group_dro.
        penalty = 0.0 if loss == "group_dro" else 0.2
        records += [
            record("control", loss, s, float(v + penalty), True) for s, v in enumerate(values)
        ]
    return config, records


def test_planted_effect_null_and_noise_get_their_verdicts() -> None:
    config, records = planted()
    found = {(c.family, c.loss): c.verdict for c in primary_contrasts(config, records)}
    against = "against cross_entropy"
    assert {loss for family, loss in found if family == against} == {
        "group_dro",
        "supcon",
        "ntxent",
    }
    assert found[against, "group_dro"].kind == "different"
    assert found[against, "group_dro"].comparison.difference > 0.1
    assert found[against, "supcon"].kind == "equivalent"
    noisy = found[against, "ntxent"]
    assert noisy.kind == "inconclusive"
    assert noisy.detectable > EQUIVALENCE_MARGIN
    # The penalty family: every loss but group_dro loses 0.2 to the shortcut.
    assert found["shortcut penalty", "group_dro"].kind == "equivalent"
    for loss in ("cross_entropy", "supcon"):
        penalty = found["shortcut penalty", loss]
        assert penalty.kind == "different" and abs(penalty.comparison.difference + 0.2) < 1e-9


def test_inconclusive_contrast_states_the_noncentral_t_detectable_difference() -> None:
    config, records = planted()
    noisy = next(
        c.verdict
        for c in primary_contrasts(config, records)
        if c.family == "against cross_entropy" and c.loss == "ntxent"
    )
    by = {
        (r["loss"], r["seed"]): r["metrics"]["decorrelated"]["worst_group_accuracy"]
        for r in records
        if r["experiment"] == "diameter"
    }
    differences = [by["ntxent", s] - by["cross_entropy", s] for s in range(SEEDS)]
    expected = minimal_detectable_difference(
        SEEDS, float(np.std(differences, ddof=1)), comparisons=3
    )
    assert abs(noisy.detectable - expected) < 1e-9


def test_report_table_has_one_row_per_method_and_says_what_is_exploratory() -> None:
    config, records = planted()
    blocks = contrast_blocks(config, records)
    text = " ".join(getattr(b, "text", "") for b in blocks)
    assert "exploratory" in text and "median detectable difference" in text
    tables = [b for b in blocks if hasattr(b, "rows")]
    assert len(tables) == 1  # the control has no contrasts of its own
    rows = {row[0]: row for row in tables[0].rows}
    assert set(rows) == {"cross_entropy", "group_dro", "supcon", "ntxent"}
    assert rows["cross_entropy"][1] == ""  # no contrast with itself, but its penalty
    assert rows["cross_entropy"][6].startswith("different")
    assert rows["supcon"][4] == f"equivalent within +-{EQUIVALENCE_MARGIN:g}"
