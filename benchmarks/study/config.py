"""The study's configuration: presets are plain TOML files that users copy and edit.

Every key is checked before any training starts: an unknown key, preset, loss or device
raises ``ConfigError`` naming what was wrong and the accepted values.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("smoke", "quick", "full")

# The study's losses, each mapped to the nodulebench registry names it trains with.
STUDY_LOSSES: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("cross_entropy",),
    "supcon": ("supcon",),
    "supcon_ce": ("supcon", "cross_entropy"),
    "contrastive": ("contrastive",),
    "triplet": ("triplet",),
    "multi_similarity": ("multi_similarity",),
    "ntxent": ("ntxent",),
}


class ConfigError(ValueError):
    """A study configuration or command-line value that cannot be used."""


@dataclass(frozen=True)
class DataConfig:
    """Dataset sizes (per experiment and seed) and image size."""

    image_size: int = 32
    n_train: int = 2000
    n_test: int = 1000
    n_probe: int = 512


@dataclass(frozen=True)
class ExperimentConfig:
    """One training distribution: the causal label rule plus one correlated nuisance."""

    name: str
    shortcut: str
    strength: float


@dataclass(frozen=True)
class ModelConfig:
    """The encoder architecture and the sizes of its heads."""

    arch: str = "small_cnn"
    width: int = 16
    projection_dim: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of stage 1 (the loss) and stage 2 (the linear classifier)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    linear_steps: int = 300
    linear_lr: float = 1e-2
    ce_weight: float = 1.0


@dataclass(frozen=True)
class ProbeConfig:
    """Feature identification: probes, interventions, Grad-CAM."""

    folds: int = 5
    intervention_n: int = 256
    gradcam_n: int = 128


@dataclass(frozen=True)
class StudyConfig:
    """Everything one invocation of the study needs."""

    name: str
    seeds: tuple[int, ...]
    losses: tuple[str, ...]
    experiments: tuple[ExperimentConfig, ...]
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (the form stored beside the results)."""
        return dataclasses.asdict(self)


def _build(cls: type, table: Any, where: str) -> Any:
    """Build a section dataclass from a TOML table, rejecting unknown keys and wrong types."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table; got {type(table).__name__}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [{where}]; accepted: {', '.join(names)}"
        )
    kwargs = {}
    for f in fields:
        if f.name not in table:
            continue
        value, expected = table[f.name], type(f.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{where}.{f.name} must be {expected.__name__}; got {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _positive(where: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{where} must be > 0; got {value!r}")


def load_config(path: Path) -> StudyConfig:
    """Read a study configuration from a TOML file and validate it."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    return config_from_dict(raw, default_name=Path(path).stem)


def config_from_dict(raw: dict[str, Any], *, default_name: str = "custom") -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from a parsed TOML document."""
    top = ("name", "seeds", "losses", "experiments", "device", "data", "model", "train",
           "probe", "loss_options")
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(unknown)}; accepted: {', '.join(top)}"
        )
    for key in ("seeds", "losses", "experiments"):
        if key not in raw:
            raise ConfigError(f"the config must set '{key}'")
    seeds = raw["seeds"]
    if not (isinstance(seeds, list) and seeds
            and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0; got {seeds!r}")
    losses = tuple(raw["losses"])
    check_losses(losses)
    experiments = tuple(
        _build_experiment(e, i) for i, e in enumerate(raw["experiments"])
    )
    if not experiments:
        raise ConfigError("experiments must hold at least one [[experiments]] table")
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiment names must be unique; got {names}")
    loss_options = raw.get("loss_options", {})
    if not isinstance(loss_options, dict):
        raise ConfigError("[loss_options] must be a table of tables")
    registry_names = sorted({n for names_ in STUDY_LOSSES.values() for n in names_})
    for key, options in loss_options.items():
        if key not in registry_names:
            raise ConfigError(
                f"unknown loss '{key}' in [loss_options]; accepted: {', '.join(registry_names)}"
            )
        if not isinstance(options, dict):
            raise ConfigError(f"[loss_options.{key}] must be a table")
    config = StudyConfig(
        name=str(raw.get("name", default_name)),
        seeds=tuple(seeds),
        losses=losses,
        experiments=experiments,
        device=str(raw.get("device", "cpu")),
        data=_build(DataConfig, raw.get("data", {}), "data"),
        model=_build(ModelConfig, raw.get("model", {}), "model"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
        probe=_build(ProbeConfig, raw.get("probe", {}), "probe"),
        loss_options={k: dict(v) for k, v in loss_options.items()},
    )
    _check_values(config)
    return config


def _build_experiment(table: Any, index: int) -> ExperimentConfig:
    where = f"experiments[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    accepted = ("name", "shortcut", "strength")
    unknown = sorted(set(table) - set(accepted))
    missing = sorted(set(accepted) - set(table))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; accepted: {', '.join(accepted)}"
        )
    if missing:
        raise ConfigError(f"{where} must set {', '.join(missing)}")
    return ExperimentConfig(name=str(table["name"]), shortcut=str(table["shortcut"]),
                            strength=float(table["strength"]))


def check_losses(losses: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` unless every name is a study loss."""
    if not losses:
        raise ConfigError("losses must name at least one loss")
    for name in losses:
        if name not in STUDY_LOSSES:
            raise ConfigError(
                f"unknown loss '{name}'; accepted: {', '.join(STUDY_LOSSES)}"
            )


def _check_values(config: StudyConfig) -> None:
    from .models import ENCODERS

    if config.model.arch not in ENCODERS:
        raise ConfigError(
            f"model.arch must be one of {', '.join(ENCODERS)}; got {config.model.arch!r}"
        )
    for where, value in [
        ("data.image_size", config.data.image_size), ("data.n_train", config.data.n_train),
        ("data.n_test", config.data.n_test), ("data.n_probe", config.data.n_probe),
        ("model.width", config.model.width),
        ("model.projection_dim", config.model.projection_dim),
        ("train.epochs", config.train.epochs), ("train.batch_size", config.train.batch_size),
        ("train.lr", config.train.lr), ("train.linear_steps", config.train.linear_steps),
        ("train.linear_lr", config.train.linear_lr), ("probe.folds", config.probe.folds),
        ("probe.intervention_n", config.probe.intervention_n),
        ("probe.gradcam_n", config.probe.gradcam_n),
    ]:
        _positive(where, value)
    for where, value in [("train.weight_decay", config.train.weight_decay),
                         ("train.ce_weight", config.train.ce_weight)]:
        if value < 0:
            raise ConfigError(f"{where} must be >= 0; got {value!r}")
    for experiment in config.experiments:
        if not -1.0 <= experiment.strength <= 1.0:
            raise ConfigError(
                f"experiment '{experiment.name}': strength must lie in [-1, 1]; "
                f"got {experiment.strength}"
            )


def preset_path(preset: str) -> Path:
    """The TOML file of a named preset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; accepted: {', '.join(PRESETS)}")
    return PRESET_DIR / f"{preset}.toml"
