"""Crash tests: the study killed at random points and rerun gives identical metrics; a
truncated run file is named in the log and the run is done again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reproduce_study.py"
CONFIG = Path(__file__).with_name("crash.toml")
COMPARED = ("metrics", "heads", "loss_history", "probes", "sensitivity", "saliency")


def command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(CONFIG),
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def finish(out: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command(out), capture_output=True, text=True, env=environment(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(out: Path) -> dict[str, dict]:
    return {
        r["run_id"]: {k: r[k] for k in COMPARED}
        for r in json.loads((out / "metrics.json").read_text())
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("reference")
    start = time.perf_counter()
    finish(out)
    return out, time.perf_counter() - start


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_gives_identical_metrics(
    reference: tuple[Path, float], tmp_path: Path
) -> None:
    expected, seconds = reference
    out = tmp_path / "killed"
    chance = random.Random(2024)
    for _ in range(3):
        process = subprocess.Popen(
            command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment()
        )
        time.sleep(chance.uniform(0.2, 0.8) * seconds)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finish(out)
    assert records(out) == records(expected)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["json", "npz"])
def test_truncated_run_file_is_named_and_redone(
    reference: tuple[Path, float], tmp_path: Path, victim: str
) -> None:
    expected, _ = reference
    out = tmp_path / "damaged"
    import shutil

    shutil.copytree(expected, out)
    path = out / "runs" / f"diameter__supcon__seed1.{victim}"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result = finish(out)
    assert f"{path}" in result.stderr and "the run is done again" in result.stderr
    assert result.stderr.count("done diameter__") == 1
    assert records(out) == records(expected)


def run_shard(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*command(out), *extra], capture_output=True, text=True, env=environment(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_shards_into_one_folder_equal_one_process(
    reference: tuple[Path, float], tmp_path: Path
) -> None:
    expected, _ = reference
    out = tmp_path / "sharded"
    first = run_shard(out, "--shard", "1/2")
    assert "no report" in first.stderr and not (out / "report.md").exists()
    run_shard(out, "--report-only")
    report = (out / "report.md").read_text()
    assert "**Incomplete: 2 of 4 runs have not finished**" in report
    assert "`diameter__cross_entropy__seed1`" in report  # the other shard's runs, named
    second = run_shard(out, "--shard", "2/2")
    assert "done diameter__" in second.stderr and "seed0" not in second.stderr.split("done")[1]
    assert "Incomplete" not in (out / "report.md").read_text()
    assert records(out) == records(expected)
