"""Run the study's grid (experiment x seed x loss), resuming after interruptions."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.evaluation import evaluate_predictions
from nodulebench.probing import RenderCache
from nodulebench.threads import set_threads

from .config import STUDY_LOSSES, ConfigError, DataConfig, ExperimentConfig, StudyConfig
from .identify import identify_features
from .parallel import Parallel
from .store import RunStore, atomic_write_json
from .training import encode, fit_heads, head_probabilities, identify, train

log = logging.getLogger("study")

# Seeds of the data sets, offset so that train, test, probe and DFR sets never share samples.
TEST_SEED_OFFSET = 10_000
PROBE_SEED_OFFSET = 20_000
DFR_SEED_OFFSET = 30_000
PROBE_DISTRIBUTION = "decorrelated"

#: The (label x shortcut side) groups of Sagawa et al. (2020), by index ``2 * label +
#: conflicting`` (:meth:`nodulebench.SyntheticNodules.group_ids`).
GROUPS = SyntheticNodules.group_names


@dataclass
class LabelledImages:
    """Images ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``, labels and group indices ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor


@dataclass
class ExperimentData:
    """Everything one (experiment, seed) needs, rendered once and shared by all losses.

    The probe set does not depend on the seed, so representations of different seeds are
    row-aligned for CKA.
    """

    train: LabelledImages
    test_sets: dict[str, LabelledImages]
    dfr: LabelledImages
    probe_set: SyntheticNodules
    probe_images: torch.Tensor
    probe_masks: dict[str, torch.Tensor]
    #: The identification model's training-set predictions, computed on first need.
    identification: torch.Tensor | None = None

    @functools.cached_property
    def probe_renders(self) -> RenderCache:
        """The probe set, rendering each counterfactual once for all the group's losses."""
        return RenderCache(self.probe_set)


def group_robust_inputs(
    config: StudyConfig,
    loss: str,
    data: ExperimentData,
    seed: int,
    device: torch.device,
    parallel: Parallel | None = None,
) -> dict[str, torch.Tensor]:
    """The per-sample inputs of a group-robust loss (none for the others).

    ``group_dro`` gets the generator's ground-truth groups (label x shortcut side), which a
    user of real data rarely has; ``group_dro_inferred`` gets label x whether the
    identification model was right, as JTT and CnC use that model.
    """
    how = STUDY_LOSSES[loss]
    train_set = data.train
    if how.groups == "generator":
        return {"groups": train_set.groups}
    if not how.needs_identification:
        return {}
    if data.identification is None:
        data.identification = identify(
            config, train_set.images, train_set.labels, seed, device, parallel
        )
    wrong = data.identification != train_set.labels
    if how.groups == "inferred":
        return {"groups": 2 * train_set.labels + wrong.long()}
    if how.protocol == "jtt":
        upweight = torch.full(wrong.shape, config.train.jtt_upweight)
        return {"weights": torch.where(wrong, upweight, torch.ones_like(upweight))}
    return {"predictions": data.identification}


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


def study_test_distributions(spec: NoduleSpec) -> dict[str, NoduleSpec]:
    """The spec's test distributions; the covariate shift leaves the shortcut factor alone.

    An acquisition shortcut (noise, blur, spacing) would otherwise be moved wholly to one
    side of its split by the covariate shift, leaving some groups empty.
    """
    factor = spec.shortcut_factors[0]
    return {
        "iid": spec.iid(),
        "decorrelated": spec.decorrelated(),
        "reversed": spec.reversed(),
        "heldout": spec.heldout(),
        "covariate": spec.covariate_shift(**{factor: spec.marginals[factor]}),
    }


def _labelled(spec: NoduleSpec, n: int, seed: int, data: DataConfig) -> LabelledImages:
    dataset = SyntheticNodules(spec, n=n, seed=seed, **data.sizes())
    return LabelledImages(dataset.render(range(n)), dataset.labels, dataset.group_ids())


def prepare_data(config: StudyConfig, experiment: ExperimentConfig, seed: int) -> ExperimentData:
    """Render the training set, every test set, the DFR set and the probe set."""
    d = config.data
    spec = training_spec(experiment)
    distributions = study_test_distributions(spec)
    test_sets = {
        name: _labelled(test_spec, d.n_test, seed + TEST_SEED_OFFSET, d)
        for name, test_spec in distributions.items()
    }
    probe_set = SyntheticNodules(
        distributions[PROBE_DISTRIBUTION], n=d.n_probe, seed=PROBE_SEED_OFFSET, **d.sizes()
    )
    probe_images, probe_masks = probe_set.render(range(len(probe_set)), return_masks=True)
    return ExperimentData(
        train=_labelled(spec, d.n_train, seed, d),
        test_sets=test_sets,
        dfr=_labelled(distributions[PROBE_DISTRIBUTION], d.n_dfr, seed + DFR_SEED_OFFSET, d),
        probe_set=probe_set,
        probe_images=probe_images,
        probe_masks=probe_masks,
    )


def evaluate(probabilities: torch.Tensor, test: LabelledImages) -> dict[str, Any]:
    """Binary metrics, per-group accuracies and the worst-group accuracy of one head."""
    return evaluate_predictions(probabilities, test.labels, test.groups).to_dict()


def run_one(
    config: StudyConfig,
    experiment: ExperimentConfig,
    loss: str,
    seed: int,
    data: ExperimentData,
    device: torch.device,
    progress: Any,
    parallel: Parallel | None = None,
) -> tuple[dict, dict] | None:
    """Train, evaluate and probe one model; return its record and arrays (rank 0 only).

    Every model is evaluated with three linear heads on the same encoder: its protocol's
    own (``metrics``), one refit on the frozen features of the biased training set
    (``heads.linear``: the two-stage protocol) and one refit on a small group-balanced set
    (``heads.dfr``).
    """
    parallel = parallel or Parallel()
    start = time.perf_counter()
    steps = config.train.epochs * (config.data.n_train // config.train.batch_size)
    with progress.bar(total=steps, desc=run_id(experiment.name, loss, seed)) as bar:
        per_sample = group_robust_inputs(config, loss, data, seed, device, parallel)
        trained = train(
            config,
            loss,
            data.train.images,
            data.train.labels,
            seed,
            device,
            on_step=lambda: bar.update(1),
            parallel=parallel,
            per_sample=per_sample,
        )
    train_seconds = time.perf_counter() - start
    if not parallel.is_main:
        return None
    heads = fit_heads(config, trained, data.train, data.dfr, seed, device)
    metrics: dict[str, dict[str, Any]] = {name: {} for name in heads}
    for test_name, test in data.test_sets.items():
        features = encode(trained.model, test.images, device, config.train.autocast)
        for head_name, head in heads.items():
            metrics[head_name][test_name] = evaluate(head_probabilities(head, features), test)
    identified, arrays = identify_features(config, trained.model, data, device)
    record = {
        "run_id": run_id(experiment.name, loss, seed),
        "experiment": experiment.name,
        "shortcut": experiment.shortcut,
        "strength": experiment.strength,
        "loss": loss,
        "seed": seed,
        "metrics": metrics.pop("model"),
        "heads": metrics,
        "loss_history": trained.loss_history,
        "train_seconds": train_seconds,
        "machine": machine(device),
        "total_seconds": time.perf_counter() - start,
        **identified,
    }
    if STUDY_LOSSES[loss].needs_identification and data.identification is not None:
        # The identification run is trained once per (experiment, seed), in the first run
        # that needs it (and counted in that run's time).
        wrong = data.identification != data.train.labels
        record["identification_error_rate"] = float(wrong.float().mean())
    return record, arrays


def check_output_folder(out: Path, config: StudyConfig, fresh: bool) -> None:
    """Create (or reset) the results folder; refuse one that holds another config's runs."""
    try:
        if fresh and out.exists():
            for child in (
                "runs",
                "figures",
                "report.md",
                "metrics.json",
                "metrics.csv",
                "config.json",
                "study.log",
            ):
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


def run_grid(
    config: StudyConfig,
    store: RunStore,
    device: torch.device,
    progress: Any,
    parallel: Parallel | None = None,
    workers: int = 1,
) -> None:
    """Run every (experiment, seed, loss) not finished yet, in a fixed order.

    Under torchrun rank 0 decides which runs are pending and every rank trains them
    together; rank 0 alone evaluates and writes each finished run. With ``workers > 1``
    the (experiment, seed) groups are shared out among that many processes, each with
    ``torch.get_num_threads() // workers`` threads: small convolutions use two cores
    better as two processes than as two threads of one.
    """
    parallel = parallel or Parallel()
    groups = [(e, s) for e in config.experiments for s in config.seeds]
    if workers > 1:
        _run_in_workers(config, store, device, groups, workers)
        return
    with progress.bar(total=len(groups) * len(config.losses), desc="study", position=0) as overall:
        for experiment, seed in groups:
            _run_group(config, store, experiment, seed, device, progress, parallel, overall)


def _run_group(
    config: StudyConfig,
    store: RunStore,
    experiment: ExperimentConfig,
    seed: int,
    device: torch.device,
    progress: Any,
    parallel: Parallel,
    overall: Any,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """The pending runs of one (experiment, seed): the data is rendered once for all.

    ``stopped`` is asked before each run; a worker whose study was stopped returns.
    """
    pending = parallel.broadcast(
        [
            loss
            for loss in config.losses
            if not _finished(store, run_id(experiment.name, loss, seed))
        ]
        if parallel.is_main
        else None
    )
    overall.update(len(config.losses) - len(pending))
    for loss in config.losses:
        if loss not in pending:
            log.info("skip %s (finished earlier)", run_id(experiment.name, loss, seed))
    if not pending:
        return
    data = prepare_data(config, experiment, seed)
    for loss in pending:
        if stopped():
            return
        rid = run_id(experiment.name, loss, seed)
        log.info("run %s", rid)
        result = run_one(config, experiment, loss, seed, data, device, progress, parallel)
        if result is not None:
            record, arrays = result
            store.save(rid, record, arrays)
            log.info("done %s in %.1f s: %s", rid, record["total_seconds"], _headline(record))
        parallel.barrier()
        overall.update(1)


def worker_environment(threads: int) -> dict[str, str]:
    """Environment variables that a worker process reads once, as it starts.

    * BLAS threads: numpy's and scipy's OpenBLAS would otherwise each start a thread per
      core, which spin-wait after every call (the probes' L-BFGS makes thousands) on the
      core of another worker.
    * glibc malloc: keep freed memory instead of returning it to the system. Each training
      step frees and reallocates the same few-MB activations; returned, they come back as
      fresh pages whose faults cost up to a tenth of a run's time.
    """
    return {
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    }


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ`` (for processes spawned inside), then restore."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_in_workers(
    config: StudyConfig,
    store: RunStore,
    device: torch.device,
    groups: list[tuple[ExperimentConfig, int]],
    workers: int,
) -> None:
    """Share the groups out round-robin among ``workers`` spawned processes and wait."""
    import multiprocessing

    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker,
            args=(config, store.root, str(device), groups[k::workers], threads, os.getpid()),
            name=f"study-worker-{k}",
        )
        for k in range(min(workers, len(groups)))
    ]
    with environment(worker_environment(threads)):
        for process in processes:
            process.start()
    for process in processes:
        process.join()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"study worker(s) failed: {', '.join(failed)}; see study.log")


def _worker(
    config: StudyConfig,
    root: Path,
    device: str,
    groups: list[tuple[ExperimentConfig, int]],
    threads: int,
    parent: int,
) -> None:
    """One worker process: its groups, one after another, without progress bars."""
    from .progress import Progress

    set_threads(threads)
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(root / "study.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    store = RunStore(root)
    progress = Progress(enabled=False)

    def stopped() -> bool:  # the study was stopped: do not run on alone
        return os.getppid() != parent

    with progress.bar(total=0, desc="") as overall:
        for experiment, seed in groups:
            if stopped():
                return
            _run_group(
                config,
                store,
                experiment,
                seed,
                torch.device(device),
                progress,
                Parallel(),
                overall,
                stopped,
            )


def _finished(store: RunStore, rid: str) -> bool:
    """Whether a run is done; unreadable files are named in the log and discarded."""
    if not store.exists(rid):
        return False
    problem = store.problem(rid)
    if problem is None:
        return True
    log.warning("%s; the run is done again", problem)
    store.discard(rid)
    return False


def _headline(record: dict) -> str:
    parts = [f"{name} {m['worst_group_accuracy']:.3f}" for name, m in record["metrics"].items()]
    return "worst-group accuracy " + ", ".join(parts)
