"""Run the study's grid (experiment x seed x loss), resuming after interruptions."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.metrics import binary_metrics

from .config import ConfigError, ExperimentConfig, StudyConfig
from .identify import identify_features
from .parallel import Parallel
from .store import RunStore, atomic_write_json
from .training import predict_proba, train

log = logging.getLogger("study")

# Seeds of the data sets, offset so that train, test and probe sets never share samples.
TEST_SEED_OFFSET = 10_000
PROBE_SEED_OFFSET = 20_000
PROBE_DISTRIBUTION = "decorrelated"


@dataclass
class ExperimentData:
    """Everything one (experiment, seed) needs, rendered once and shared by all losses."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    probe_set: SyntheticNodules
    probe_images: torch.Tensor
    probe_masks: dict[str, torch.Tensor]


def run_id(experiment: str, loss: str, seed: int) -> str:
    """The name of one run's files."""
    return f"{experiment}__{loss}__seed{seed}"


def machine(device: torch.device) -> str:
    """This machine, in words: the device that trains and the software."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"
    return f"{name}, torch {torch.__version__}"


def causal_factor() -> str:
    """The factor the default label rule reads (spiculation)."""
    return NoduleSpec().causal_factors[0]


def training_spec(experiment: ExperimentConfig) -> NoduleSpec:
    """The training distribution: default label rule plus the experiment's shortcut."""
    return NoduleSpec().with_shortcut(experiment.shortcut, experiment.strength)


def prepare_data(config: StudyConfig, experiment: ExperimentConfig, seed: int) -> ExperimentData:
    """Render the training set, one test set per shifted distribution, and the probe set."""
    d = config.data
    spec = training_spec(experiment)
    train_set = SyntheticNodules(spec, n=d.n_train, seed=seed, image_size=d.image_size)
    test_sets = {}
    distributions = spec.test_distributions()
    for name, test_spec in distributions.items():
        test = SyntheticNodules(test_spec, n=d.n_test, seed=seed + TEST_SEED_OFFSET,
                                image_size=d.image_size)
        test_sets[name] = (test.render(range(len(test))), test.labels)
    probe_set = SyntheticNodules(distributions[PROBE_DISTRIBUTION], n=d.n_probe,
                                 seed=seed + PROBE_SEED_OFFSET, image_size=d.image_size)
    probe_images, probe_masks = probe_set.render(range(len(probe_set)), return_masks=True)
    return ExperimentData(train_set.render(range(len(train_set))), train_set.labels,
                          test_sets, probe_set, probe_images, probe_masks)


def run_one(config: StudyConfig, experiment: ExperimentConfig, loss: str, seed: int,
            data: ExperimentData, device: torch.device, progress: Any,
            parallel: Parallel | None = None) -> tuple[dict, dict] | None:
    """Train, evaluate and probe one model; return its record and arrays (rank 0 only)."""
    parallel = parallel or Parallel()
    start = time.perf_counter()
    steps = config.train.epochs * (config.data.n_train // min(config.train.batch_size,
                                                              config.data.n_train))
    with progress.bar(total=steps, desc=run_id(experiment.name, loss, seed)) as bar:
        trained = train(config, loss, data.train_images, data.train_labels, seed, device,
                        on_step=lambda: bar.update(1), parallel=parallel)
    train_seconds = time.perf_counter() - start
    if not parallel.is_main:
        return None
    metrics = {
        name: binary_metrics(predict_proba(trained.model, images, device), labels).to_dict()
        for name, (images, labels) in data.test_sets.items()
    }
    identified, arrays = identify_features(config, trained.model, data, seed, device)
    record = {
        "run_id": run_id(experiment.name, loss, seed),
        "experiment": experiment.name,
        "shortcut": experiment.shortcut,
        "strength": experiment.strength,
        "loss": loss,
        "seed": seed,
        "metrics": metrics,
        "loss_history": trained.loss_history,
        "train_seconds": train_seconds,
        "machine": machine(device),
        "total_seconds": time.perf_counter() - start,
        **identified,
    }
    return record, arrays


def check_output_folder(out: Path, config: StudyConfig, fresh: bool) -> None:
    """Create (or reset) the results folder; refuse one that holds another config's runs."""
    try:
        if fresh and out.exists():
            for child in ("runs", "figures", "report.md", "metrics.json", "metrics.csv",
                          "config.json", "study.log"):
                target = out / child
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to the output folder {out}: {err}") from err
    saved = out / "config.json"
    # Compared in their JSON form, where tuples have become lists.
    wanted = _resumable(json.loads(json.dumps(config.to_dict())))
    if saved.exists():
        previous = _resumable(json.loads(saved.read_text()))
        if previous != wanted:
            raise ConfigError(
                f"{out} holds results of a different configuration; pass --fresh to start "
                "over or choose another --out"
            )
    atomic_write_json(saved, config.to_dict())


def _resumable(config: dict) -> dict:
    """The part of a config that must match for finished runs to be reused."""
    return {k: v for k, v in config.items() if k not in ("seeds", "losses", "device", "name")}


def run_grid(config: StudyConfig, store: RunStore, device: torch.device, progress: Any,
             parallel: Parallel | None = None) -> None:
    """Run every (experiment, seed, loss) not finished yet, in a fixed order.

    Under torchrun rank 0 decides which runs are pending and every rank trains them
    together; rank 0 alone evaluates and writes each finished run.
    """
    parallel = parallel or Parallel()
    todo = [(e, s, loss) for e in config.experiments for s in config.seeds
            for loss in config.losses]
    with progress.bar(total=len(todo), desc="study", position=0) as overall:
        for experiment in config.experiments:
            for seed in config.seeds:
                pending = parallel.broadcast(
                    [loss for loss in config.losses
                     if not store.is_done(run_id(experiment.name, loss, seed))]
                )
                overall.update(len(config.losses) - len(pending))
                for loss in config.losses:
                    if loss not in pending:
                        log.info("skip %s (finished earlier)", run_id(experiment.name, loss, seed))
                if not pending:
                    continue
                data = prepare_data(config, experiment, seed)
                for loss in pending:
                    rid = run_id(experiment.name, loss, seed)
                    log.info("run %s", rid)
                    result = run_one(config, experiment, loss, seed, data, device, progress,
                                     parallel)
                    if result is not None:
                        record, arrays = result
                        store.save(rid, record, arrays)
                        log.info("done %s in %.1f s: %s", rid, record["total_seconds"],
                                 _headline(record))
                    parallel.barrier()
                    overall.update(1)


def _headline(record: dict) -> str:
    parts = [f"{name} {m['balanced_accuracy']:.3f}" for name, m in record["metrics"].items()]
    return "balanced accuracy " + ", ".join(parts)
