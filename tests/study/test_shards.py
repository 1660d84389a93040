"""Sharding a study: disjoint slices that together hold every run, and bad values named."""

from __future__ import annotations

import pytest

from study.config import ConfigError, StudyConfig, config_from_dict
from study.runner import shard_groups

RAW = {
    "seeds": [0, 1, 2, 3, 4],
    "losses": ["cross_entropy"],
    "experiments": [
        {"name": "control", "shortcut": "diameter_mm", "strength": 0.0},
        {"name": "diameter", "shortcut": "diameter_mm", "strength": 0.9},
        {"name": "site", "shortcut": "site", "strength": 0.9},
    ],
    "data": {"image_size": 16, "n_train": 64, "n_test": 8, "n_probe": 8, "n_dfr": 8},
    "probe": {"folds": 2, "intervention_n": 8, "gradcam_n": 8, "cka_n": 8},
    "train": {"batch_size": 32},
}


@pytest.fixture(scope="module")
def config() -> StudyConfig:
    return config_from_dict(RAW)


@pytest.mark.parametrize("n", [1, 2, 4, 15, 16])
def test_shards_are_disjoint_and_cover_every_group_once(config: StudyConfig, n: int) -> None:
    every = [(e.name, s) for e in config.experiments for s in config.seeds]
    shards = [[(e.name, s) for e, s in shard_groups(config, (k, n))] for k in range(1, n + 1)]
    assert sorted(g for shard in shards for g in shard) == sorted(every)  # each exactly once
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shard", [(0, 2), (3, 2), (1, 0)])
def test_a_shard_outside_its_count_is_named(config: StudyConfig, shard: tuple[int, int]) -> None:
    with pytest.raises(ConfigError, match=f"got {shard[0]}/{shard[1]}"):
        shard_groups(config, shard)
