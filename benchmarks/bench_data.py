"""Throughput and peak memory of the SyntheticNodules batch renderer.

Usage::

    PYTHONPATH=src python benchmarks/bench_data.py            # CPU, and CUDA when present
    PYTHONPATH=src python benchmarks/bench_data.py --threads 2 --image-size 32 --json out.jsonl
    PYTHONPATH=src python benchmarks/bench_data.py --threads 1 --volume-size 32 --batch-size 64
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_data.py --threads 1 --labels 10000000

Prints images/s (median over repeats, after a warm-up) of ``ds.render`` for the default spec
(with masks off and on; volumes of ``--volume-size`` cubed voxels when given) and the peak
memory of one batch: CPU resident-set growth
(``ru_maxrss``) or CUDA ``max_memory_allocated``. With ``--labels N`` it first times
``ds.labels`` of an ``N``-sample dataset (one fresh process per spec, so that each peak
memory is its own): the default spec (allocated labels) and a spec whose rule is not a split
(with a shortcut and label noise, so that exact counts within classes need every label),
with the size of the pickled dataset (what each DataLoader worker receives). One JSON line
per measurement is appended to ``--json`` when given, with the device named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import LinearLabelRule
from nodulebench.threads import set_threads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    ds: SyntheticNodules, device: torch.device, batch: int, repeats: int, masks: bool
) -> tuple[float, float]:
    """Median images/s over wall-clock time, and images per CPU-second of this process."""
    starts = range(0, ds.n - batch + 1, batch)
    chunks = [torch.arange(s, s + batch) for s in starts]
    ds.render(chunks[0], device=device, return_masks=masks)  # warm-up
    _sync(device)
    times, cpu_times = [], []
    for r in range(repeats):
        idx = chunks[r % len(chunks)]
        t0, c0 = time.perf_counter(), time.process_time()
        ds.render(idx, device=device, return_masks=masks)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return batch / statistics.median(times), batch / statistics.median(cpu_times)


class _Batches(torch.utils.data.Dataset[torch.Tensor]):
    """Batch ``b`` of a dataset, rendered in one call (a DataLoader item per batch)."""

    def __init__(self, ds: SyntheticNodules, batch: int) -> None:
        self.ds, self.batch = ds, batch

    def __len__(self) -> int:
        return self.ds.n // self.batch

    def __getitem__(self, b: int) -> torch.Tensor:
        return self.ds.render(torch.arange(b * self.batch, (b + 1) * self.batch))


def bench_workers(ds: SyntheticNodules, batch: int, workers: int) -> float:
    """Images/s of ``workers`` DataLoader processes rendering whole batches.

    DataLoader workers run torch with one thread each: one core per worker, no intra-op
    synchronisation (the way to use several cores, especially on a shared machine).
    """
    loader = torch.utils.data.DataLoader(
        _Batches(ds, batch), batch_size=None, num_workers=workers, prefetch_factor=2
    )
    it = iter(loader)
    for _ in range(workers):  # let every worker start and render once
        next(it)
    count, t0 = 0, time.perf_counter()
    for images in it:
        count += images.shape[0]
    return count / (time.perf_counter() - t0)


def peak_memory_mb(ds: SyntheticNodules, device: torch.device, batch: int) -> float:
    idx = torch.arange(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        ds.render(idx, device=device)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    scale = 1024 if sys.platform != "darwin" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    ds.render(idx, device=device)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return (after - before) / 2**20


def _time_labels(spec: NoduleSpec, n: int, threads: int | None) -> tuple[float, float, int]:
    """Seconds and resident-set growth (MB) of ``ds.labels``, and the pickled dataset's bytes."""
    import pickle

    if threads:
        torch.set_num_threads(threads)
    scale = 1024 if sys.platform != "darwin" else 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    t0 = time.perf_counter()
    ds = SyntheticNodules(spec, n=n, seed=0)
    labels = ds.labels
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    assert labels.shape == (n,)
    return seconds, (after - before) / 2**20, len(pickle.dumps(ds))


def bench_labels(n: int, threads: int | None) -> list[dict[str, object]]:
    """``ds.labels`` of two specs, each in a fresh (spawned) process; prints one row each."""
    import multiprocessing

    specs = {
        "default (allocated split)": NoduleSpec(),
        "linear rule, shortcut, label noise": NoduleSpec(
            label_rule=LinearLabelRule({"spiculation": 1.0, "attenuation_hu": 1.0}, 0.9),
            malignant_fraction=None,
            label_noise=0.05,
        ).with_shortcut("diameter_mm", 0.8),
    }
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for name, spec in specs.items():
        with ctx.Pool(1) as pool:
            seconds, grown_mb, pickled = pool.apply(_time_labels, (spec, n, threads))
        print(
            f"labels of n={n:,} ({name}; {threads or torch.get_num_threads()} threads): "
            f"{seconds:.1f} s, resident-set growth {grown_mb:,.0f} MB, "
            f"pickled dataset {pickled:,} bytes"
        )
        rows.append(
            {"bench": "labels", "spec": name, "n": n, "seconds": seconds, "peak_mb": grown_mb}
        )
        rows[-1]["pickle_bytes"] = pickled
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch and BLAS (default: OMP_NUM_THREADS if set, else the "
        "CPUs this process may use)",
    )
    parser.add_argument(
        "--device",
        action="append",
        default=None,
        help="cpu and/or cuda (default: cpu, plus cuda when available)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also time this many DataLoader worker processes (CPU)",
    )
    parser.add_argument(
        "--volume-size",
        type=int,
        default=None,
        help="time volumes of this many voxels per side instead of images",
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=0,
        help="first time ds.labels of a dataset of this many samples (e.g. 10000000)",
    )
    parser.add_argument("--json", default=None, help="append JSON lines to this file")
    args = parser.parse_args()
    if args.labels > 0:
        rows = bench_labels(args.labels, args.threads)
        if args.json:
            with open(args.json, "a") as fh:
                fh.writelines(
                    json.dumps({**row, "torch": torch.__version__}) + "\n" for row in rows
                )
    size = args.volume_size or args.image_size
    shape = f"{size}x{size}" + (f"x{size} volumes" if args.volume_size else " images")

    def dataset(n: int) -> SyntheticNodules:
        if args.volume_size:
            return SyntheticNodules(NoduleSpec(), n=n, seed=0, volume_size=args.volume_size)
        return SyntheticNodules(NoduleSpec(), n=n, seed=0, image_size=args.image_size)

    set_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for name in devices:
        device = torch.device(name)
        # memory first, so that the CPU high-water mark starts low
        n = args.batch_size * (4 if device.type == "cpu" else 16)
        ds = dataset(n)
        ds.render([0, 1], device=device)
        peak = peak_memory_mb(ds, device, args.batch_size)
        batch = args.batch_size if device.type == "cpu" else min(n, 16 * args.batch_size)
        rate, per_cpu_s = bench(ds, device, batch, args.repeats, masks=False)
        rate_masks, _ = bench(ds, device, batch, args.repeats, masks=True)
        label = (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
        print(
            f"{name} ({label}) {shape}, batch {batch}: "
            f"{rate:,.0f} samples/s, {rate_masks:,.0f} samples/s with masks; "
            f"peak memory of a {args.batch_size}-sample batch {peak:,.0f} MB"
        )
        if device.type == "cpu":
            # on a shared machine wall-clock rates depend on the other jobs; CPU time less so
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(
                f"    {per_cpu_s:,.0f} samples per CPU-second; load average {load:.1f} "
                f"on {os.cpu_count()} cores"
            )
        workers_rate = None
        if device.type == "cpu" and args.workers > 0:
            big = dataset(args.batch_size * (args.workers + 12))
            workers_rate = bench_workers(big, args.batch_size, args.workers)
            print(
                f"    {args.workers} DataLoader workers (1 thread each): "
                f"{workers_rate:,.0f} samples/s"
            )
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "bench": "render",
                            "device": name,
                            "device_name": label,
                            "image_size": args.image_size,
                            "volume_size": args.volume_size,
                            "batch_size": batch,
                            "images_per_s": rate,
                            "images_per_s_masks": rate_masks,
                            "peak_mb": peak,
                            "images_per_cpu_s": per_cpu_s,
                            "workers": args.workers,
                            "images_per_s_workers": workers_rate,
                            "torch": torch.__version__,
                        }
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
