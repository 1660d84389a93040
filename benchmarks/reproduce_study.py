"""Reproduce *The Effect of the Loss on Generalization* (Baltatzis et al., 2021) end to end.

Trains one model per (training distribution, loss, seed) on SyntheticNodules, evaluates it on
every shifted test distribution, identifies the features it learned (probes, interventions,
Grad-CAM, CKA) and writes ``report.md``, ``metrics.json``, ``metrics.csv`` and figures.

    python benchmarks/reproduce_study.py --preset quick --out results/quick

Rerunning the same command resumes: finished runs are skipped, and a run whose files are
truncated, corrupt or incomplete is named in the log and done again. ``--fresh`` starts over.
A second study on the same ``--out`` is refused while the first runs; every loss is called
once on a tiny batch before any training, so that bad options fail first.
``--workers 2`` trains two runs side by side (best on a 2-core CPU).
``--shard K/N`` runs the K-th of N disjoint slices of the runs into one results folder (a
job array over many machines sharing a filesystem); the shard that finds every run done
writes the report, and ``--report-only`` writes it from whatever has finished, naming
the runs that have not.
Under ``torchrun --nproc_per_node N`` the runs train with DDP on N processes; only rank 0
evaluates and writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from nodulebench.threads import set_threads
from study.config import (
    PRESETS,
    STUDY_LOSSES,
    ConfigError,
    StudyConfig,
    check_losses,
    check_seeds,
    load_config,
    preset_path,
)
from study.parallel import Parallel, close_parallel, init_parallel
from study.preflight import check_losses_run
from study.progress import Progress
from study.report import write_report
from study.runner import check_output_folder, missing_runs, run_grid
from study.store import (
    ResultsLock,
    RunStore,
    StudyLockedError,
    StudyWriteError,
    lock_results_folder,
)

log = logging.getLogger("study")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", default="quick", help=f"one of {', '.join(PRESETS)} (default: quick)"
    )
    source.add_argument("--config", type=Path, help="a TOML config (copy a preset to start)")
    parser.add_argument("--out", type=Path, help="results folder (default: results/<name>)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    parser.add_argument(
        "--losses", nargs="+", help=f"override the config's losses ({', '.join(STUDY_LOSSES)})"
    )
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch and BLAS, shared by the --workers (default: "
        "OMP_NUM_THREADS if set, else the CPUs this process may use: affinity and cgroup quota)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that train runs side by side, sharing --threads "
        "(default: 1; 2 suits a 2-core CPU)",
    )
    parser.add_argument(
        "--shard",
        help="K/N: run only the K-th of N disjoint slices of the runs (1 <= K <= N), for "
        "a job array sharing one --out; the shard that finds every run done writes the report",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; write the report from the finished runs, naming missing ones",
    )
    return parser.parse_args(argv)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``; ``ConfigError`` naming the value unless 1 <= K <= N."""
    if text is None:
        return (1, 1)
    parts = text.split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        k, n = int(parts[0]), int(parts[1])
        if 1 <= k <= n:
            return (k, n)
    raise ConfigError(f"--shard must be K/N with integers 1 <= K <= N (e.g. 3/8); got {text!r}")


def resolve_config(args: argparse.Namespace) -> StudyConfig:
    """The config file or preset, with command-line overrides applied and checked."""
    import dataclasses

    config = load_config(args.config if args.config else preset_path(args.preset))
    changes: dict[str, object] = {}
    if args.seeds:
        if any(s < 0 for s in args.seeds):
            raise ConfigError(f"--seeds must be integers >= 0; got {args.seeds}")
        changes["seeds"] = check_seeds(args.seeds, "--seeds")
    if args.losses:
        check_losses(tuple(args.losses))
        changes["losses"] = tuple(args.losses)
    if args.device:
        changes["device"] = args.device
    return dataclasses.replace(config, **changes)


def resolve_device(name: str) -> torch.device:
    """The torch device, checked to exist on this machine."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device '{name}'; accepted: cpu, cuda, cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device '{name}'; accepted: cpu, cuda, cuda:N")
    return device


def setup_logging(out: Path) -> None:
    """The study's and the library's log lines, to ``study.log`` and to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = (logging.FileHandler(out / "study.log"), logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
    for logger in (log, logging.getLogger("nodulebench")):
        logger.setLevel(logging.INFO)
        for handler in handlers:
            logger.addHandler(handler)


def prepare_output(
    args: argparse.Namespace, config: StudyConfig, parallel: Parallel
) -> tuple[RunStore, ResultsLock | None]:
    """Rank 0 locks and checks (or resets) the output folder; every rank learns the verdict.

    Returns the store and, on rank 0, the open lock file (the lock lasts while it is open).
    """
    out = args.out or Path("results") / config.name
    error, lock = None, None
    if parallel.is_main:
        try:
            lock = lock_results_folder(out, parse_shard(args.shard), report_only=args.report_only)
            check_output_folder(out, config, args.fresh)
        except (ConfigError, StudyLockedError, StudyWriteError) as err:
            error = str(err)
            if lock is not None:
                lock.close()
    error = parallel.broadcast(error)
    if error is not None:
        raise ConfigError(error)
    return RunStore(out), lock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1; got {args.workers}")
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1; got {args.threads}")
        shard = parse_shard(args.shard)
        if shard[1] > 1 and args.fresh:
            raise ConfigError(
                "--fresh cannot be combined with --shard: one shard would delete the runs "
                "of the others; empty the results folder once, before the shards start"
            )
        if args.report_only and (args.fresh or args.shard):
            raise ConfigError("--report-only trains nothing: drop --fresh and --shard")
        config = resolve_config(args)
        resolve_device(config.device)
        Progress(enabled=not args.no_progress)  # says how to do without tqdm, on every rank
    except (ConfigError, ImportError) as err:
        print(f"reproduce_study.py: error: {err}", file=sys.stderr)
        return 2
    parallel, device_name = init_parallel(config.device)
    try:
        device = resolve_device(device_name)
        if parallel.active and args.workers > 1:
            raise ConfigError(
                "--workers > 1 cannot be combined with torchrun; use one or the other"
            )
        if config.train.batch_size % parallel.world_size:
            raise ConfigError(
                f"train.batch_size ({config.train.batch_size}) must be divisible "
                f"by the number of processes ({parallel.world_size})"
            )
        check_losses_run(config, device)
        store, lock = prepare_output(args, config, parallel)
    except ConfigError as err:
        print(f"reproduce_study.py: error: {err}", file=sys.stderr)
        close_parallel(parallel)
        return 2
    if parallel.is_main:
        setup_logging(store.root)
    if args.report_only:
        if parallel.is_main:
            write_report(config, store)
            missing = missing_runs(config, store)
            log.info(
                "report written: %s (%s)",
                store.root / "report.md",
                f"{len(missing)} run(s) missing" if missing else "complete",
            )
        close_parallel(parallel)
        if lock is not None:
            lock.close()
        return 0
    threads = set_threads(args.threads)  # before any work: torch and BLAS alike
    runs = len(config.experiments) * len(config.seeds) * len(config.losses)
    log.info(
        "study '%s': %d runs on %s x %d process(es), %d CPU thread(s), results in %s",
        config.name,
        runs,
        device,
        parallel.world_size,
        threads,
        store.root,
    )
    start = time.perf_counter()
    progress = Progress(enabled=not args.no_progress and parallel.is_main)
    try:
        with progress.logging_through_bars(log, logging.getLogger("nodulebench")):
            run_grid(config, store, device, progress, parallel, workers=args.workers, shard=shard)
        if parallel.is_main:
            missing = missing_runs(config, store)
            if missing:
                # Another shard's runs: the last shard to finish finds none missing.
                log.info(
                    "shard %d/%d finished in %.0f s; %d run(s) of other shards not done yet, "
                    "so no report (the last shard to finish writes it; or run --report-only)",
                    *shard,
                    time.perf_counter() - start,
                    len(missing),
                )
            else:
                write_report(config, store)
                log.info(
                    "finished in %.0f s; report: %s",
                    time.perf_counter() - start,
                    store.root / "report.md",
                )
    except StudyWriteError as err:
        print(f"reproduce_study.py: error: {err}", file=sys.stderr)
        return 1
    finally:
        close_parallel(parallel)
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
