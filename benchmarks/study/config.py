"""The study's configuration: presets are plain TOML files that users copy and edit.

Every key is checked before any training starts: an unknown key, preset, loss or device
raises ``ConfigError`` naming what was wrong and the accepted values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodulebench._validation import did_you_mean
from nodulebench.data import FACTORS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("smoke", "quick", "quick3d", "full")


@dataclass(frozen=True)
class StudyLoss:
    """How one study loss trains: the registry losses it sums and its protocol.

    Attributes:
        registry: nodulebench registry names; an embedding loss first, then
            ``cross_entropy`` when the classifier trains jointly.
        protocol: ``"end_to_end"`` (encoder + classifier by cross-entropy), ``"two_stage"``
            (encoder + projection by the embedding loss, then a linear classifier on the
            frozen encoder), ``"joint"`` (embedding loss + cross-entropy together), or one
            of the group-robust protocols: ``"group_dro"`` (encoder + classifier by
            GroupDRO on group ids), ``"jtt"`` (cross-entropy with the identification
            model's errors upweighted) and ``"cnc"`` (Correct-N-Contrast on the
            identification model's predictions + cross-entropy).
        views: augmented views of each image per step (1 or 2).
        uses_labels: whether the embedding loss sees the labels.
        groups: where GroupDRO's group ids come from: ``"generator"`` (the ground-truth
            label x shortcut side), ``"inferred"`` (label x whether the identification
            model was right) or ``"none"``.
    """

    registry: tuple[str, ...]
    protocol: str
    views: int = 2
    uses_labels: bool = True
    groups: str = "none"

    @property
    def needs_identification(self) -> bool:
        """Whether it trains on a first (identification) model's predictions."""
        return self.protocol in ("jtt", "cnc") or self.groups == "inferred"


# The study's losses. ``cross_entropy_2view`` is a protocol control: cross-entropy on the
# same two views as the embedding losses (its refit linear head is the two-stage protocol).
STUDY_LOSSES: dict[str, StudyLoss] = {
    "cross_entropy": StudyLoss(("cross_entropy",), "end_to_end", views=1),
    "cross_entropy_2view": StudyLoss(("cross_entropy",), "end_to_end"),
    "supcon": StudyLoss(("supcon",), "two_stage"),
    "supcon_ce": StudyLoss(("supcon", "cross_entropy"), "joint"),
    "contrastive": StudyLoss(("contrastive",), "two_stage"),
    "triplet": StudyLoss(("triplet",), "two_stage"),
    "multi_similarity": StudyLoss(("multi_similarity",), "two_stage"),
    "ntxent": StudyLoss(("ntxent",), "two_stage", uses_labels=False),
    # Methods built against shortcuts; all but "group_dro" find the shortcut through the
    # errors of a short cross-entropy run (TrainConfig.identification_epochs).
    "group_dro": StudyLoss(("group_dro",), "group_dro", views=1, groups="generator"),
    "group_dro_inferred": StudyLoss(("group_dro",), "group_dro", views=1, groups="inferred"),
    "jtt": StudyLoss(("cross_entropy",), "jtt", views=1),
    "cnc": StudyLoss(("cnc", "cross_entropy"), "cnc", views=1),
}


class ConfigError(ValueError):
    """A study configuration or command-line value that cannot be used."""


@dataclass(frozen=True)
class DataConfig:
    """Dataset sizes (per experiment and seed) and image size.

    ``dims = 3`` renders CT volumes ``(1, D, H, W)`` with ``image_size`` voxels a side
    instead of images ``(1, H, W)`` (it needs a 3-D ``model.arch``). ``n_dfr`` images of
    the decorrelated distribution (every (label, shortcut side) group equally large)
    retrain the last layer (DFR, Kirichenko et al. 2022). ``n_val`` images of the training
    distribution, never trained on, with their group labels, are the validation split that
    model selection reads after every epoch (no test set informs any choice).
    """

    image_size: int = 32
    dims: int = 2
    n_train: int = 2000
    n_test: int = 1000
    n_probe: int = 512
    n_dfr: int = 256
    n_val: int = 400

    def sizes(self) -> dict[str, Any]:
        """The size arguments of :class:`~nodulebench.SyntheticNodules` for these data."""
        return {
            "image_size": self.image_size,
            "volume_size": self.image_size if self.dims == 3 else None,
        }


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
    """Optimisation of stage 1 (the loss) and stage 2 (the linear classifier).

    ``autocast`` runs the encoder and heads of stage 1 in mixed precision (``"bfloat16"``,
    fast on CPUs with bf16 instructions and on GPUs) or not at all (``"none"``); the
    encoder is read in the same precision for evaluation, probes and interventions, while
    the losses, the linear heads, Grad-CAM and the CKA Grams stay in float32. ``channels_last`` is
    the memory layout of the convolutions (faster on CPU, same arithmetic).

    ``identification_epochs`` (JTT's T) trains the cross-entropy model whose
    training-set errors JTT upweights by ``jtt_upweight`` (JTT's lambda_up), whose
    predictions CnC contrasts and whose errors give ``group_dro_inferred`` its groups.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    linear_steps: int = 300
    linear_lr: float = 1e-2
    ce_weight: float = 1.0
    autocast: str = "none"
    channels_last: bool = True
    identification_epochs: int = 2
    jtt_upweight: float = 100.0


@dataclass(frozen=True)
class ProbeConfig:
    """Feature identification: probes, interventions, saliency, CKA (on ``cka_n`` images)."""

    folds: int = 5
    intervention_n: int = 256
    gradcam_n: int = 128
    cka_n: int = 128


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
        hint = did_you_mean(unknown[0], names)
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in [{where}]; accepted: {', '.join(names)}{hint}"
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
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{f.name} must be finite; got {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _positive(where: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{where} must be a finite number > 0; got {value!r}")


def load_config(path: Path) -> StudyConfig:
    """Read a study configuration from a TOML file and validate it."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    return config_from_dict(raw, default_name=Path(path).stem)


TOP_LEVEL = (
    "name",
    "seeds",
    "losses",
    "experiments",
    "device",
    "data",
    "model",
    "train",
    "probe",
    "loss_options",
)


def config_from_dict(raw: dict[str, Any], *, default_name: str = "custom") -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from a parsed TOML document.

    Every key and value is checked here, before any training: types, ranges, names of
    losses and shortcut factors, each loss's options (each loss is constructed once), and
    every training distribution is built and two of its images rendered.
    """
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(TOP_LEVEL)}{did_you_mean(unknown[0], TOP_LEVEL)}"
        )
    for key in ("seeds", "losses", "experiments"):
        if key not in raw:
            raise ConfigError(f"the config must set '{key}'")
    for key in ("name", "device"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{key} must be a string; got {raw[key]!r}")
    seeds = check_seeds(raw["seeds"], "seeds")
    if not isinstance(raw["losses"], list):
        raise ConfigError(f"losses must be a list of loss names; got {raw['losses']!r}")
    losses = tuple(raw["losses"])
    check_losses(losses)
    if not isinstance(raw["experiments"], list):
        raise ConfigError(
            f"experiments must be a list of [[experiments]] tables; got {raw['experiments']!r}"
        )
    experiments = tuple(_build_experiment(e, i) for i, e in enumerate(raw["experiments"]))
    if not experiments:
        raise ConfigError("experiments must hold at least one [[experiments]] table")
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiment names must be unique; got {names}")
    loss_options = raw.get("loss_options", {})
    if not isinstance(loss_options, dict):
        raise ConfigError("[loss_options] must be a table of tables")
    registry_names = sorted({n for study in STUDY_LOSSES.values() for n in study.registry})
    for key, options in loss_options.items():
        if key not in registry_names:
            raise ConfigError(
                f"unknown loss '{key}' in [loss_options]; accepted: "
                f"{', '.join(registry_names)}{did_you_mean(key, registry_names)}"
            )
        if not isinstance(options, dict):
            raise ConfigError(f"[loss_options.{key}] must be a table")
    config = StudyConfig(
        name=check_study_name(str(raw.get("name", default_name))),
        seeds=seeds,
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
    check_loss_options(config)
    check_experiments(config)
    return config


def check_study_name(name: str) -> str:
    """The name, or ``ConfigError`` unless it is a plain file name.

    The name is the results folder under ``results/`` by default, so it may not hold a path
    separator, be ``.`` or ``..``, start with a dot or hold control characters; ``--out``
    is the way to write elsewhere.
    """
    separators = ("/", "\\")
    plain = (
        bool(name)
        and not name.startswith(".")
        and not any(sep in name for sep in separators)
        and name.isprintable()
        and len(name.encode()) <= 200
    )
    if not plain:
        raise ConfigError(
            f"name must be a plain file name (no '/', '\\' or leading '.', printable, at "
            f"most 200 bytes; it names the folder under results/, and --out writes "
            f"elsewhere); got {name!r}"
        )
    return name


def check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """The seeds as a tuple, or ``ConfigError`` unless a non-empty list of distinct ints >= 0."""
    ok = (
        isinstance(seeds, (list, tuple))
        and len(seeds) > 0
        and all(type(s) is int and s >= 0 for s in seeds)
    )
    if not ok:
        raise ConfigError(f"{where} must be a non-empty list of integers >= 0; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} must not repeat a seed; got {list(seeds)}")
    return tuple(seeds)


EXPERIMENT_KEYS = ("name", "shortcut", "strength")
AUTOCAST = ("none", "bfloat16", "float16")
DIMS = (2, 3)
MAX_VOLUME_SIZE = 256  # SyntheticNodules' largest volume_size


def _build_experiment(table: Any, index: int) -> ExperimentConfig:
    where = f"experiments[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - set(EXPERIMENT_KEYS))
    missing = sorted(set(EXPERIMENT_KEYS) - set(table))
    if unknown:
        hint = did_you_mean(unknown[0], EXPERIMENT_KEYS)
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; accepted: "
            f"{', '.join(EXPERIMENT_KEYS)}{hint}"
        )
    if missing:
        raise ConfigError(f"{where} must set {', '.join(missing)}")
    name, shortcut, strength = table["name"], table["shortcut"], table["strength"]
    if not (
        isinstance(name, str)
        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)
        and "__" not in name
    ):
        raise ConfigError(
            f"{where}.name must be a string of letters, digits, '.', '-' or "
            f"single '_' (it names files); got {name!r}"
        )
    if shortcut not in FACTORS:
        raise ConfigError(
            f"{where}.shortcut must be a factor name; got {shortcut!r}"
            f"{did_you_mean(shortcut, list(FACTORS))}; accepted: "
            f"{', '.join(FACTORS)}"
        )
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not (-1.0 <= strength <= 1.0)
    ):
        raise ConfigError(f"{where}.strength must be a number in [-1, 1]; got {strength!r}")
    return ExperimentConfig(name=name, shortcut=shortcut, strength=float(strength))


def check_losses(losses: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` unless every name is a study loss, each named once."""
    if not losses:
        raise ConfigError("losses must name at least one loss")
    for name in losses:
        if name not in STUDY_LOSSES:
            raise ConfigError(
                f"unknown loss {name!r}; accepted: {', '.join(STUDY_LOSSES)}"
                f"{did_you_mean(name, STUDY_LOSSES)}"
            )
    if len(set(losses)) != len(losses):
        raise ConfigError(f"losses must not repeat a loss; got {list(losses)}")


def check_loss_options(config: StudyConfig) -> None:
    """Construct every registry loss once with its options, so a typo fails before training."""
    from nodulebench import create_loss

    for name, options in config.loss_options.items():
        try:
            create_loss(name, **options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"[loss_options.{name}]: {err}") from err


def check_experiments(config: StudyConfig) -> None:
    """Build every training and test distribution and render two images of each.

    This catches what only the generator knows (a factor that cannot be a shortcut, an
    image size it does not render) before the first run trains.
    """
    from nodulebench import SyntheticNodules

    from .runner import study_factors, study_test_distributions, training_spec

    for experiment in config.experiments:
        try:
            spec = training_spec(experiment, study_factors(config))
            tests = study_test_distributions(spec, experiment.shortcut)
            for test_spec in (spec, *tests.values()):
                SyntheticNodules(test_spec, n=2, seed=0, **config.data.sizes()).render(range(2))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"experiment '{experiment.name}' ({experiment.shortcut} at "
                f"strength {experiment.strength}): {err}"
            ) from err


def _check_values(config: StudyConfig) -> None:
    from .models import ENCODERS

    if config.model.arch not in ENCODERS:
        raise ConfigError(
            f"model.arch must be one of {', '.join(ENCODERS)}; got "
            f"{config.model.arch!r}{did_you_mean(config.model.arch, ENCODERS)}"
        )
    d, t, p = config.data, config.train, config.probe
    if d.dims not in DIMS:
        raise ConfigError(f"data.dims must be 2 (images) or 3 (volumes); got {d.dims}")
    arch_dims = ENCODERS[config.model.arch].dims
    if arch_dims != d.dims:
        fitting = [name for name, encoder in ENCODERS.items() if encoder.dims == d.dims]
        raise ConfigError(
            f"model.arch {config.model.arch!r} reads {arch_dims}-D inputs but "
            f"data.dims is {d.dims}; for data.dims = {d.dims} use one of "
            f"{', '.join(fitting)}"
        )
    if d.dims == 3 and not 16 <= d.image_size <= MAX_VOLUME_SIZE:
        raise ConfigError(
            f"data.image_size must be in 16 .. {MAX_VOLUME_SIZE} voxels for "
            f"volumes (data.dims = 3); got {d.image_size}"
        )
    for where, value in [
        ("data.image_size", d.image_size),
        ("data.n_train", d.n_train),
        ("data.n_test", d.n_test),
        ("data.n_probe", d.n_probe),
        ("data.n_dfr", d.n_dfr),
        ("data.n_val", d.n_val),
        ("model.width", config.model.width),
        ("model.projection_dim", config.model.projection_dim),
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.lr", t.lr),
        ("train.linear_steps", t.linear_steps),
        ("train.identification_epochs", t.identification_epochs),
        ("train.jtt_upweight", t.jtt_upweight),
        ("train.linear_lr", t.linear_lr),
        ("probe.folds", p.folds),
        ("probe.intervention_n", p.intervention_n),
        ("probe.gradcam_n", p.gradcam_n),
        ("probe.cka_n", p.cka_n),
    ]:
        _positive(where, value)
    for where, value in [("train.weight_decay", t.weight_decay), ("train.ce_weight", t.ce_weight)]:
        if value < 0:
            raise ConfigError(f"{where} must be >= 0; got {value!r}")
    if t.batch_size < 2:
        raise ConfigError(
            f"train.batch_size must be >= 2 (pairs need partners); got {t.batch_size}"
        )
    if t.batch_size > d.n_train:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must not exceed data.n_train ({d.n_train})"
        )
    if p.folds < 2:
        raise ConfigError(
            f"probe.folds must be >= 2 (a probe is scored on held-out folds); got {p.folds}"
        )
    if d.n_probe < 2 * p.folds:
        raise ConfigError(
            f"data.n_probe ({d.n_probe}) must be at least 2 x probe.folds ({p.folds})"
        )
    for where, value in [
        ("probe.intervention_n", p.intervention_n),
        ("probe.gradcam_n", p.gradcam_n),
        ("probe.cka_n", p.cka_n),
    ]:
        if value > d.n_probe:
            raise ConfigError(f"{where} ({value}) must not exceed data.n_probe ({d.n_probe})")
    if t.autocast not in AUTOCAST:
        raise ConfigError(
            f"train.autocast must be one of {', '.join(AUTOCAST)}; got "
            f"{t.autocast!r}{did_you_mean(t.autocast, AUTOCAST)}"
        )
    if p.cka_n < 4:
        raise ConfigError(f"probe.cka_n must be >= 4 (debiased CKA); got {p.cka_n}")
    if d.n_dfr < 8:
        raise ConfigError(f"data.n_dfr must be >= 8 (two of each of four groups); got {d.n_dfr}")


def preset_path(preset: str) -> Path:
    """The TOML file of a named preset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; accepted: {', '.join(PRESETS)}")
    return PRESET_DIR / f"{preset}.toml"
