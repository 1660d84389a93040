"""The study's group-robust protocols: what each is given, and one step of each trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.config import STUDY_LOSSES, ConfigError, config_from_dict, load_config
from study.runner import ExperimentData, LabelledImages, group_robust_inputs
from study.training import train

CRASH = Path(__file__).resolve().parent / "crash.toml"


def tiny_data(n: int = 64) -> ExperimentData:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    groups = 2 * labels + (torch.arange(n) // 2) % 2
    images = torch.rand(n, 1, 16, 16, generator=gen)
    train_set = LabelledImages(images, labels, groups)
    return ExperimentData(
        train=train_set,
        test_sets={},
        dfr=train_set,
        probe_set=None,
        probe_images=images,
        probe_masks={},
    )  # type: ignore[arg-type]


def test_each_method_gets_what_it_needs() -> None:
    config = load_config(CRASH)
    data = tiny_data()
    device = torch.device("cpu")
    assert group_robust_inputs(config, "supcon", data, 0, device) == {}
    assert data.identification is None  # nothing trained for a loss that does not need it
    truth = group_robust_inputs(config, "group_dro", data, 0, device)
    assert torch.equal(truth["groups"], data.train.groups)
    assert data.identification is None
    predictions = group_robust_inputs(config, "cnc", data, 0, device)["predictions"]
    assert data.identification is predictions  # trained once, shared
    wrong = predictions != data.train.labels
    inferred = group_robust_inputs(config, "group_dro_inferred", data, 0, device)["groups"]
    assert torch.equal(inferred, 2 * data.train.labels + wrong.long())
    weights = group_robust_inputs(config, "jtt", data, 0, device)["weights"]
    upweight = config.train.jtt_upweight
    assert torch.equal(weights, torch.where(wrong, upweight, 1.0))
    assert data.identification is predictions


@pytest.mark.parametrize("loss", ["group_dro", "group_dro_inferred", "jtt", "cnc"])
def test_each_protocol_trains_a_finite_model(loss: str) -> None:
    config = load_config(CRASH)
    data = tiny_data()
    device = torch.device("cpu")
    per_sample = group_robust_inputs(config, loss, data, 0, device)
    trained = train(
        config, loss, data.train.images, data.train.labels, 0, device, per_sample=per_sample
    )
    assert len(trained.loss_history) == config.train.epochs
    assert all(torch.isfinite(torch.tensor(trained.loss_history)))
    assert STUDY_LOSSES[loss].views == 1


def test_identification_options_are_checked() -> None:
    raw = {
        "seeds": [0],
        "losses": ["jtt"],
        "experiments": [{"name": "d", "shortcut": "diameter_mm", "strength": 0.9}],
        "data": {"image_size": 16, "n_train": 64, "n_test": 8, "n_probe": 8, "n_dfr": 8},
        "probe": {"folds": 2, "intervention_n": 8, "gradcam_n": 8, "cka_n": 8},
        "train": {"batch_size": 32, "identification_epochs": 0},
    }
    with pytest.raises(ConfigError, match="train.identification_epochs"):
        config_from_dict(raw)
    raw["train"] = {"batch_size": 32, "jtt_upweight": -1.0}
    with pytest.raises(ConfigError, match="train.jtt_upweight"):
        config_from_dict(raw)
