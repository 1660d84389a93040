"""Every key and value of a study config is checked before training, with a named error."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from study.config import ConfigError, config_from_dict

PRESETS = Path(__file__).resolve().parents[2] / "benchmarks" / "study" / "presets"


def smoke() -> dict[str, Any]:
    return tomllib.loads((PRESETS / "smoke.toml").read_text())


@pytest.mark.parametrize("preset", ["smoke", "quick", "quick3d", "full"])
def test_presets_are_valid_and_hold_a_control_and_three_kinds(preset: str) -> None:
    config = config_from_dict(tomllib.loads((PRESETS / f"{preset}.toml").read_text()))
    assert any(e.strength == 0.0 for e in config.experiments)
    shortcuts = {e.shortcut for e in config.experiments}
    assert {"diameter_mm", "calcification"} <= shortcuts
    assert shortcuts & {"noise_hu", "blur_mm", "pixel_spacing_mm", "site"}
    if preset in ("quick", "quick3d"):
        assert len(config.seeds) >= 5
    if preset == "full":
        assert len(config.seeds) >= 10
        strengths = {e.strength for e in config.experiments if e.shortcut == "diameter_mm"}
        assert {0.0, 0.5, 0.8, 0.95, 0.99} <= strengths


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    target: Any = raw
    for key in parents:
        target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
    target[last] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "experiments.0.strength",
            "high",
            "experiments[0].strength must be a number in [-1, 1]; got 'high'",
        ),
        ("experiments.0.strength", 1.5, "strength must be a number in [-1, 1]; got 1.5"),
        ("experiments.0.strength", True, "strength must be a number in [-1, 1]; got True"),
        (
            "experiments.0.shortcut",
            "diamter_mm",
            "shortcut must be a factor name; got 'diamter_mm' (did you mean 'diameter_mm'?)",
        ),
        ("experiments.0.name", "a/b", "experiments[0].name must be a string"),
        ("experiments.0.name", 3, "experiments[0].name must be a string"),
        ("experiments.0.colour", "red", "unknown key(s) colour in experiments[0]"),
        ("seeds", [True], "seeds must be a non-empty list of integers >= 0; got [True]"),
        ("seeds", [0, 0], "seeds must not repeat a seed"),
        ("seeds", [1.5], "seeds must be a non-empty list of integers"),
        ("seeds", "0", "seeds must be a non-empty list of integers"),
        ("losses", ["supcon", "supcon"], "losses must not repeat a loss"),
        ("losses", ["supcom"], "unknown loss 'supcom'; accepted:"),
        ("losses", "supcon", "losses must be a list of loss names"),
        ("name", 3, "name must be a string; got 3"),
        ("probe.folds", 1, "probe.folds must be >= 2"),
        ("probe.folds", 0, "probe.folds must be a finite number > 0; got 0"),
        ("probe.gradcam_n", 1000, "probe.gradcam_n (1000) must not exceed data.n_probe"),
        ("train.lr", float("inf"), "train.lr must be finite; got inf"),
        ("train.lr", float("nan"), "train.lr must be finite; got nan"),
        ("train.lr", "fast", "train.lr must be float; got 'fast'"),
        ("train.lr", -1.0, "train.lr must be a finite number > 0; got -1.0"),
        ("train.epochs", 2.5, "train.epochs must be int; got 2.5"),
        ("train.batch_size", 1, "train.batch_size must be >= 2"),
        ("train.batch_size", 10_000, "train.batch_size (10000) must not exceed data.n_train"),
        (
            "train.autocast",
            "bf16",
            "train.autocast must be one of none, bfloat16, float16; got 'bf16'",
        ),
        ("train.channels_last", "yes", "train.channels_last must be bool"),
        ("train.weight_decay", -0.1, "train.weight_decay must be >= 0"),
        ("data.image_size", 8, "image_size must be an int in [16, 1024]; got 8"),
        ("data.n_dfr", 4, "data.n_dfr must be >= 8"),
        (
            "model.arch",
            "resnet",
            "model.arch must be one of small_cnn, resnet18, small_cnn3d; got 'resnet'",
        ),
        ("loss_options.contrastive.margin", -0.2, "[loss_options.contrastive]: margin must be"),
        (
            "loss_options.supcon.temprature",
            0.1,
            "[loss_options.supcon]: create_loss('supcon') got "
            "unknown keyword argument(s) temprature",
        ),
        ("loss_options.supcn", {}, "unknown loss 'supcn' in [loss_options]"),
        ("device", 0, "device must be a string; got 0"),
    ],
)
def test_bad_values_are_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_set(smoke(), path, value))
    assert message in str(caught.value)


def test_quick3d_is_quick_on_volumes() -> None:
    quick = config_from_dict(tomllib.loads((PRESETS / "quick.toml").read_text()))
    quick3d = config_from_dict(tomllib.loads((PRESETS / "quick3d.toml").read_text()))
    assert quick3d.data.dims == 3
    assert quick3d.model.arch == "small_cnn3d"
    assert quick3d.losses == quick.losses
    assert len(quick3d.losses) == 12
    assert len(quick3d.seeds) >= 5
    assert quick3d.experiments == quick.experiments


def volumes() -> dict[str, Any]:
    """The smoke preset on volumes: a 3-D CNN on 16-voxel volumes."""
    return _set(
        _set(_set(smoke(), "data.dims", 3), "data.image_size", 16), "model.arch", "small_cnn3d"
    )


def test_volume_config_is_accepted_and_sizes_the_generator() -> None:
    config = config_from_dict(volumes())
    assert config.data.sizes() == {"image_size": 16, "volume_size": 16}
    assert config_from_dict(smoke()).data.sizes() == {"image_size": 32, "volume_size": None}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("data.dims", 4, "data.dims must be 2 (images) or 3 (volumes); got 4"),
        ("data.dims", 1, "data.dims must be 2 (images) or 3 (volumes); got 1"),
        ("data.dims", "3", "data.dims must be int; got '3'"),
        ("data.dims", 3.0, "data.dims must be int; got 3.0"),
        (
            "data.dims",
            2,
            "model.arch 'small_cnn3d' reads 3-D inputs but data.dims is 2; for "
            "data.dims = 2 use one of small_cnn, resnet18",
        ),
        (
            "model.arch",
            "resnet18",
            "model.arch 'resnet18' reads 2-D inputs but data.dims is 3; "
            "for data.dims = 3 use one of small_cnn3d",
        ),
        (
            "data.image_size",
            300,
            "data.image_size must be in 16 .. 256 voxels for volumes (data.dims = 3); got 300",
        ),
    ],
)
def test_bad_volume_values_are_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_set(volumes(), path, value))
    assert message in str(caught.value)


def test_a_shortcut_the_generator_refuses_is_named_with_its_experiment() -> None:
    # The label rule reads spiculation: it cannot also be a shortcut.
    raw = _set(smoke(), "experiments.0.shortcut", "spiculation")
    with pytest.raises(ConfigError, match="experiment 'control' \\(spiculation at strength 0"):
        config_from_dict(raw)
