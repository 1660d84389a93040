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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from .training import (
    SELECTION_REGIMES,
    TrainedModel,
    encode,
    fit_heads,
    fit_linear_head,
    head_probabilities,
    identify,
    selected_model,
    train,
)

log = logging.getLogger("study")

# Seeds of the data sets, offset so that train, test, probe and DFR sets never share samples.
TEST_SEED_OFFSET = 10_000
PROBE_SEED_OFFSET = 20_000
DFR_SEED_OFFSET = 30_000
VALIDATION_SEED_OFFSET = 40_000

#: The (label x shortcut side) groups of Sagawa et al. (2020), by index ``2 * label +
#: conflicting`` (:meth:`nodulebench.SyntheticNodules.group_ids`).
GROUPS = SyntheticNodules.group_names


@dataclass
class LabelledImages:
    """Images ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``, labels and group indices ``(N,)``.

    ``groups`` are the groups of the experiment's shortcut factor; ``groups_by_factor``
    those of every shortcut factor of the study (the control is read with each).
    """

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    groups_by_factor: dict[str, torch.Tensor] = field(default_factory=dict)
    #: ``(V, N, 1, ...)``: rescans 1..V of the same nodules (new acquisition noise only),
    #: the views of the two-view losses; ``None`` where no loss needs them.
    rescans: torch.Tensor | None = None


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
    #: Drawn from the training distribution, never trained on: model selection reads it.
    validation: LabelledImages | None = None

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


def study_factors(config: StudyConfig) -> tuple[str, ...]:
    """Every shortcut factor of the study's experiments, each once, in experiment order."""
    return tuple(dict.fromkeys(e.shortcut for e in config.experiments))


def training_spec(experiment: ExperimentConfig, factors: Sequence[str] = ()) -> NoduleSpec:
    """The training distribution: the experiment's shortcut, other study factors at 0.

    The label comes from the default rule; every other factor in ``factors`` is split as
    a shortcut at strength 0. Every experiment of a study thus has the same marginals
    (each factor half on either side of its split) and differs from the no-shortcut
    control only in the one correlation: the calcification shortcut, say, would otherwise
    raise benign-pattern calcification from 16 % to 50 % and leave the control unmatched.
    The control (strength 0) holds every factor's groups, so its models are evaluated with
    the groups of every shortcut.
    """
    spec = NoduleSpec()
    for factor in factors:
        if factor != experiment.shortcut:
            spec = spec.with_shortcut(factor, 0.0)
    return spec.with_shortcut(experiment.shortcut, experiment.strength)


#: The test sets of one conflicting group each: ``(label, name)`` (see :data:`GROUPS`).
CONFLICTING_TESTS = {"malignant-conflicting": 1, "benign-conflicting": 0}


def study_test_distributions(spec: NoduleSpec, factor: str) -> dict[str, NoduleSpec]:
    """The test distributions of a training spec whose shortcut under study is ``factor``.

    ``malignant-conflicting`` and ``benign-conflicting`` hold one conflicting group each
    (the label on the side of ``factor`` that disagrees with it): the two groups that a
    positive strength makes rare in training. The covariate shift leaves every shortcut
    factor alone: an acquisition shortcut (noise, blur, spacing) would otherwise be moved
    wholly to one side of its split, leaving some groups empty.

    A control (``factor`` at strength 0, every factor independent of the label) has one
    test distribution where a shortcut experiment has three (i.i.d., decorrelated and
    reversed are then the same distribution): it is drawn once, as ``decorrelated``. Its
    conflicting groups are as common as the others and are read there.
    """
    strength = next(sc.strength for sc in spec.shortcuts if sc.split.factor == factor)
    kept = {f: spec.marginals[f] for f in spec.shortcut_factors}
    covariate = spec.covariate_shift(**kept)
    if strength == 0.0:
        return {"decorrelated": spec.decorrelated(), "covariate": covariate}
    return {
        "iid": spec.iid(),
        "decorrelated": spec.decorrelated(),
        "reversed": spec.reversed(),
        **{name: spec.heldout(factor, label) for name, label in CONFLICTING_TESTS.items()},
        "covariate": covariate,
    }


def _labelled(
    spec: NoduleSpec, n: int, seed: int, data: DataConfig, factor: str, rescans: int = 0
) -> LabelledImages:
    dataset = SyntheticNodules(spec, n=n, seed=seed, **data.sizes())
    by_factor = {f: dataset.group_ids(f) for f in spec.shortcut_factors}
    views = (
        torch.stack([dataset.render(range(n), rescan=k) for k in range(1, rescans + 1)])
        if rescans
        else None
    )
    return LabelledImages(
        dataset.render(range(n)), dataset.labels, by_factor[factor], by_factor, rescans=views
    )


def views_needed(config: StudyConfig) -> int:
    """Rescans the training set needs: the most views any multi-view loss draws (else 0)."""
    views = [STUDY_LOSSES[loss].views for loss in config.losses]
    return max((v for v in views if v > 1), default=0)


def prepare_data(config: StudyConfig, experiment: ExperimentConfig, seed: int) -> ExperimentData:
    """Render the training and validation sets, every test set, the DFR and probe sets."""
    d = config.data
    factor = experiment.shortcut
    spec = training_spec(experiment, study_factors(config))
    distributions = study_test_distributions(spec, factor)
    test_sets = {
        name: _labelled(test_spec, d.n_test, seed + TEST_SEED_OFFSET, d, factor)
        for name, test_spec in distributions.items()
    }
    probe_spec = spec.decorrelated()
    probe_set = SyntheticNodules(probe_spec, n=d.n_probe, seed=PROBE_SEED_OFFSET, **d.sizes())
    probe_images, probe_masks = probe_set.render(range(len(probe_set)), return_masks=True)
    return ExperimentData(
        train=_labelled(spec, d.n_train, seed, d, factor, rescans=views_needed(config)),
        test_sets=test_sets,
        dfr=_labelled(probe_spec, d.n_dfr, seed + DFR_SEED_OFFSET, d, factor),
        probe_set=probe_set,
        probe_images=probe_images,
        probe_masks=probe_masks,
        validation=_labelled(spec, d.n_val, seed + VALIDATION_SEED_OFFSET, d, factor),
    )


def evaluate(probabilities: torch.Tensor, test: LabelledImages) -> dict[str, Any]:
    """Binary metrics, per-group accuracies and the worst-group accuracy of one head.

    ``by_factor`` repeats the group accuracies with the groups of every shortcut factor of
    the study (``{factor: {worst_group_accuracy, worst_group, group_accuracy}}``).
    """
    by_factor = {}
    for factor, ids in test.groups_by_factor.items():
        of_factor = evaluate_predictions(probabilities, test.labels, ids)
        by_factor[factor] = {
            "worst_group_accuracy": of_factor.worst_group_accuracy,
            "worst_group": of_factor.worst_group,
            "group_accuracy": dict(of_factor.group_accuracy),
        }
    return {
        **evaluate_predictions(probabilities, test.labels, test.groups).to_dict(),
        "by_factor": by_factor,
    }


def run_one(
    config: StudyConfig,
    experiment: ExperimentConfig,
    loss: str,
    seed: int,
    data: ExperimentData,
    device: torch.device,
    progress: Any,
    parallel: Parallel | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
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
            rescans=data.train.rescans,
            on_step=lambda: bar.update(1),
            parallel=parallel,
            per_sample=per_sample,
            validation=data.validation,
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
    selection = selected_metrics(config, trained, metrics["model"], data, seed, device)
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
        "validation_history": trained.validation,
        "selection": selection,
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
        record["error_set"] = error_set_quality(wrong, data.train.groups)
    return record, arrays


def error_set_quality(wrong: torch.Tensor, groups: torch.Tensor) -> dict[str, float | None]:
    """How well the identification model's errors ``(N,)`` find the conflicting groups.

    JTT upweights the error set and ``group_dro_inferred`` groups by it, as a stand-in
    for the conflicting groups (odd indices of :data:`GROUPS`). ``precision``: the share
    of errors that are conflicting; ``recall``: the share of conflicting samples that are
    errors (``None`` where undefined).
    """
    conflicting = groups % 2 == 1
    hits = int((wrong & conflicting).sum())
    errors, actual = int(wrong.sum()), int(conflicting.sum())
    return {
        "size": errors,
        "precision": hits / errors if errors else None,
        "recall": hits / actual if actual else None,
    }


def selected_metrics(
    config: StudyConfig,
    trained: TrainedModel,
    final: dict[str, dict[str, Any]],
    data: ExperimentData,
    seed: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """``{regime: {epoch, validation, metrics}}``: each selection regime's model on every test.

    The protocol's head of the chosen epoch is evaluated (a two-stage loss's head is refit
    on the chosen encoder's training features, as in stage 2). A regime that chose the
    last epoch reuses ``final`` (the metrics of the trained model); two regimes that chose
    one epoch share its evaluation.
    """
    out: dict[str, dict[str, Any]] = {}
    by_epoch: dict[int, dict[str, dict[str, Any]]] = {len(trained.loss_history): final}
    for regime, chosen in trained.selected.items():
        if chosen.epoch not in by_epoch:
            model = selected_model(trained, regime)
            head: torch.nn.Module = model.classifier
            if STUDY_LOSSES[trained.study_loss].protocol == "two_stage":
                features = encode(model, data.train.images, device, config.train.autocast)
                head = fit_linear_head(config, features, data.train.labels, seed)
            by_epoch[chosen.epoch] = {
                name: evaluate(
                    head_probabilities(
                        head, encode(model, test.images, device, config.train.autocast)
                    ),
                    test,
                )
                for name, test in data.test_sets.items()
            }
        scores = {k: v for k, v in chosen.scores.items() if k != "epoch"}
        out[regime] = {
            "epoch": chosen.epoch,
            "criterion": SELECTION_REGIMES[regime],
            "validation": scores,
            "metrics": by_epoch[chosen.epoch],
        }
    return out


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


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match for finished runs to be reused."""
    return {k: v for k, v in config.items() if k not in ("seeds", "losses", "device", "name")}


def run_grid(
    config: StudyConfig,
    store: RunStore,
    device: torch.device,
    progress: Any,
    parallel: Parallel | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (1, 1),
) -> None:
    """Run every (experiment, seed, loss) not finished yet, in a fixed order.

    ``shard = (k, n)`` runs only the k-th of n disjoint slices of the runs
    (:func:`shard_groups`), so that n processes on as many machines share one results
    folder.

    Under torchrun rank 0 decides which runs are pending and every rank trains them
    together; rank 0 alone evaluates and writes each finished run. With ``workers > 1``
    the (experiment, seed) groups are shared out among that many processes, each with
    ``torch.get_num_threads() // workers`` threads: small convolutions use two cores
    better as two processes than as two threads of one.
    """
    parallel = parallel or Parallel()
    groups = shard_groups(config, shard)
    if workers > 1:
        _run_in_workers(config, store, device, groups, workers)
        return
    with progress.bar(total=len(groups) * len(config.losses), desc="study", position=0) as overall:
        for experiment, seed in groups:
            _run_group(config, store, experiment, seed, device, progress, parallel, overall)


def shard_groups(
    config: StudyConfig, shard: tuple[int, int] = (1, 1)
) -> list[tuple[ExperimentConfig, int]]:
    """The (experiment, seed) groups of shard ``k`` of ``n`` (1-based), in grid order.

    The groups are dealt round-robin, so the n shards are disjoint, together hold every
    group, and differ in size by at most one. A group's losses stay together: its data
    are rendered once.
    """
    k, n = shard
    if not (isinstance(n, int) and isinstance(k, int) and n >= 1 and 1 <= k <= n):
        raise ConfigError(f"shard must be K/N with 1 <= K <= N; got {k}/{n}")
    groups = [(e, s) for e in config.experiments for s in config.seeds]
    return groups[k - 1 :: n]


def missing_runs(config: StudyConfig, store: RunStore) -> list[str]:
    """The run ids of the config that are not done yet, in grid order."""
    return [
        run_id(e.name, loss, seed)
        for e in config.experiments
        for seed in config.seeds
        for loss in config.losses
        if not store.is_done(run_id(e.name, loss, seed))
    ]


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


def _headline(record: dict[str, Any]) -> str:
    parts = [f"{name} {m['worst_group_accuracy']:.3f}" for name, m in record["metrics"].items()]
    return "worst-group accuracy " + ", ".join(parts)
