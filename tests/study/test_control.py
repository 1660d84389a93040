"""The control serves every shortcut: matched marginals, one test set, every factor's groups."""

from __future__ import annotations

import torch

from nodulebench import SyntheticNodules
from study.config import ExperimentConfig
from study.runner import GROUPS, study_test_distributions, training_spec

FACTORS = ("diameter_mm", "calcification", "site")
CONTROL = ExperimentConfig("control", "diameter_mm", 0.0)
CALCIFICATION = ExperimentConfig("calcification", "calcification", 0.9)


def split_of(spec, factor: str):  # type: ignore[no-untyped-def]
    return next(sc.split for sc in spec.shortcuts if sc.split.factor == factor)


def benign_side_share(spec, split, n: int = 400) -> float:  # type: ignore[no-untyped-def]
    dataset = SyntheticNodules(spec, n=n, seed=1, image_size=16)
    return float((~split.malignant_side(dataset.factors[split.factor])).float().mean())


def test_a_shortcut_keeps_the_controls_marginals() -> None:
    control = training_spec(CONTROL, FACTORS)
    shortcut = training_spec(CALCIFICATION, FACTORS)
    for factor in FACTORS:
        split = split_of(shortcut, factor)
        assert benign_side_share(control, split) == benign_side_share(shortcut, split) == 0.5
    # Without the matched design the control keeps the default marginal of benign-pattern
    # calcification (16 %) while the calcification shortcut moves it to one half.
    unmatched = training_spec(CONTROL)
    share = benign_side_share(unmatched, split_of(shortcut, "calcification"))
    assert abs(share - 0.16) < 0.05


def test_the_control_is_tested_once_and_shortcuts_hold_out_both_conflicting_groups() -> None:
    control = study_test_distributions(training_spec(CONTROL, FACTORS), "diameter_mm")
    assert sorted(control) == ["covariate", "decorrelated"]
    spec = training_spec(CALCIFICATION, FACTORS)
    tests = study_test_distributions(spec, "calcification")
    for name in ("malignant-conflicting", "benign-conflicting"):
        dataset = SyntheticNodules(tests[name], n=64, seed=2, image_size=16)
        ids = dataset.group_ids("calcification")
        assert torch.equal(ids, torch.full_like(ids, GROUPS.index(name)))
