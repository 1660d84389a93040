"""Model selection on the validation split: each regime's choice, and no test set leaks in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from study.config import load_config
from study.progress import Progress
from study.runner import LabelledImages, prepare_data, run_one
from study.training import SELECTION_REGIMES, selected_model, validation_scores

CRASH = Path(__file__).resolve().parent / "crash.toml"


def config_for_selection():  # type: ignore[no-untyped-def]
    config = load_config(CRASH)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=4))


def flipped(test: LabelledImages) -> LabelledImages:
    """Another test set: the images reversed in order and every label flipped."""
    labels = 1 - test.labels.flip(0)
    return LabelledImages(test.images.flip(0), labels, test.groups.flip(0) ^ 2)


@pytest.mark.parametrize("loss", ["cross_entropy", "supcon"])
def test_choices_come_from_validation_alone(loss: str) -> None:
    config = config_for_selection()
    experiment = config.experiments[0]
    device = torch.device("cpu")
    data = prepare_data(config, experiment, 0)
    result = run_one(config, experiment, loss, 0, data, device, Progress(enabled=False))
    assert result is not None
    record = result[0]
    history = record["validation_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert set(record["selection"]) == set(SELECTION_REGIMES)
    for regime, key in (("accuracy", "accuracy"), ("worst_group", "worst_group_accuracy")):
        scores = [h[key] for h in history]
        # The first epoch with the best validation score (ties to the earlier epoch).
        assert record["selection"][regime]["epoch"] == 1 + scores.index(max(scores))
    # Planted leak: other test sets (labels flipped) would change a test-informed choice.
    data.test_sets = {name: flipped(test) for name, test in data.test_sets.items()}
    data.identification = None
    again = run_one(config, experiment, loss, 0, data, device, Progress(enabled=False))
    assert again is not None
    for regime in SELECTION_REGIMES:
        assert again[0]["selection"][regime]["epoch"] == record["selection"][regime]["epoch"]
    assert again[0]["validation_history"] == history
    assert again[0]["metrics"] != record["metrics"]  # the planted test sets do differ


def test_the_kept_state_is_the_chosen_epochs() -> None:
    """Re-scoring the kept state on the validation split gives that epoch's scores."""
    from study.training import train

    config = config_for_selection()
    data = prepare_data(config, config.experiments[0], 0)
    assert data.validation is not None
    trained = train(
        config,
        "cross_entropy",
        data.train.images,
        data.train.labels,
        0,
        torch.device("cpu"),
        validation=data.validation,
    )
    for regime, chosen in trained.selected.items():
        model = selected_model(trained, regime)
        rescored = validation_scores(
            config,
            "cross_entropy",
            model,
            data.train.images,
            data.train.labels,
            data.validation,
            0,
        )
        assert rescored["accuracy"] == trained.validation[chosen.epoch - 1]["accuracy"]
        assert rescored["group_accuracy"] == chosen.scores["group_accuracy"]


def test_each_regime_keeps_the_epoch_of_its_planted_best(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted validation scores: accuracy peaks at epoch 2, worst-group at epoch 3 (of 4)."""
    import study.training as training

    planted = iter(
        [
            {"accuracy": 0.7, "worst_group_accuracy": 0.2},
            {"accuracy": 0.9, "worst_group_accuracy": 0.3},
            {"accuracy": 0.9, "worst_group_accuracy": 0.6},  # a tie: the earlier epoch stays
            {"accuracy": 0.8, "worst_group_accuracy": 0.6},
        ]
    )
    states = []

    def scores(config, study_loss, model, *args):  # type: ignore[no-untyped-def]
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return dict(next(planted))

    monkeypatch.setattr(training, "validation_scores", scores)
    config = config_for_selection()
    data = prepare_data(config, config.experiments[0], 0)
    trained = training.train(
        config,
        "cross_entropy",
        data.train.images,
        data.train.labels,
        0,
        torch.device("cpu"),
        validation=data.validation,
    )
    assert {r: s.epoch for r, s in trained.selected.items()} == {"accuracy": 2, "worst_group": 3}
    for selected in trained.selected.values():
        kept = selected.state
        assert all(torch.equal(kept[k], states[selected.epoch - 1][k]) for k in kept)
        assert not all(torch.equal(kept[k], states[-1][k]) for k in kept)
