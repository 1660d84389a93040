"""Wall time of the quickstart and the smoke study at each CPU thread setting, side by side.

Each (job, setting) runs in a fresh process, with ``OMP_NUM_THREADS`` and the BLAS
variables removed from its environment so that only ``--threads`` decides:

* ``default``: no ``--threads``: the scripts' default, the CPUs this process may use
  (CPU affinity capped by the cgroup's CPU quota, :func:`nodulebench.threads.available_cpus`);
* ``one``: ``--threads 1``;
* ``torch``: ``--threads N`` with N torch's own default in a fresh process (one thread per
  core it sees, blind to a cgroup quota): what the scripts used before they chose.

Settings alternate within each repeat (default, one, torch, default, ...) so that a
machine whose load changes treats them alike; the load average is recorded before and
after each run, and the CPU seconds of the child (user + system), which load distorts
least. Results are appended as JSON lines to ``benchmarks/results/bench_threads.jsonl``.

    python benchmarks/bench_threads.py                          # tiny quickstart + smoke
    python benchmarks/bench_threads.py --jobs quickstart --size full --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_threads.jsonl"
VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def clean_environment() -> dict[str, str]:
    """This environment without the thread variables, the package's sources first."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


def torch_default_threads() -> int:
    """``torch.get_num_threads()`` of a fresh process without thread variables."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_environment(), capture_output=True, text=True
    )
    return int(out.stdout)


def command(job: str, size: str, folder: Path) -> list[str]:
    """The command line of one job, without ``--threads``."""
    if job == "quickstart":
        tiny = ["--tiny"] if size == "tiny" else []
        return [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            *tiny,
            "--out",
            str(folder),
        ]
    return [
        sys.executable,
        str(ROOT / "benchmarks" / "reproduce_study.py"),
        "--preset",
        "smoke",
        "--fresh",
        "--no-progress",
        "--out",
        str(folder),
    ]


def run(job: str, size: str, threads: int | None, timeout: float) -> dict:
    """Wall and CPU seconds of one job in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        line = command(job, size, Path(tmp))
        if threads is not None:
            line += ["--threads", str(threads)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run(
            line, env=clean_environment(), capture_output=True, text=True, timeout=timeout
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(line)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["quickstart", "smoke"])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny", help="quickstart")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=["default", "one", "torch"])
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--json", type=Path, default=RESULTS, help="JSON lines appended here")
    args = parser.parse_args(argv)
    unknown = set(args.jobs) - {"quickstart", "smoke"} or set(args.settings) - {
        "default",
        "one",
        "torch",
    }
    if unknown:
        parser.error(f"unknown job or setting: {', '.join(sorted(unknown))}")

    sys.path.insert(0, str(ROOT / "src"))
    from nodulebench.threads import available_cpus

    torch_threads = torch_default_threads()
    chosen = {"default": None, "one": 1, "torch": torch_threads}
    machine = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "torch_default_threads": torch_threads,
    }
    print(json.dumps(machine))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        for job in args.jobs:
            for setting in args.settings:
                threads = chosen[setting]
                record = {
                    "job": job if job == "smoke" else f"quickstart-{args.size}",
                    "setting": setting,
                    "threads": available_cpus() if threads is None else threads,
                    "repeat": repeat,
                    **run(job, args.size, threads, args.timeout),
                    **machine,
                }
                print(json.dumps(record), flush=True)
                with args.json.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
