"""CPU threads: what the process may use (affinity, cgroup quota) and setting them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodulebench.threads import available_cpus, default_threads, set_threads, thread_limit

AFFINITY = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs of quota count as one
        ({"cpu.max": "max 100000\n"}, AFFINITY),  # no quota
        ({"cpu.max": "garbage"}, AFFINITY),  # unreadable: the affinity alone
        ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, AFFINITY),
        ({"cpu.max": "10000000 100000\n"}, AFFINITY),  # a quota above the cores
    ],
)
def test_available_cpus_caps_the_affinity_by_the_cgroup_quota(tmp_path: Path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(tmp_path) == expected


def test_default_threads_follows_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    assert default_threads() == available_cpus()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == available_cpus()


def test_set_threads_rejects_non_positive_counts() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be an integer >= 1 or None"):
            set_threads(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="threads must be an integer >= 1; got"):
            with thread_limit(bad):  # type: ignore[arg-type]
                pass


def test_set_threads_sets_torch_and_the_loaded_blas_libraries() -> None:
    # In a child process: thread pools are process-wide. OpenBLAS starts with two
    # threads there (its environment variable), so the change to one is seen.
    code = (
        "import json, numpy, scipy.linalg, torch\n"
        "from nodulebench.threads import blas_threads, set_threads, thread_limit\n"
        "before = blas_threads()\n"
        "with thread_limit(1):\n"
        "    inside = [blas_threads(), torch.get_num_threads()]\n"
        "restored = [blas_threads(), torch.get_num_threads()]\n"
        "set_threads(1)\n"
        "import os\n"
        "print(json.dumps([before, blas_threads(), torch.get_num_threads(),\n"
        "                  os.environ['OPENBLAS_NUM_THREADS'], inside, restored]))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    before, after, torch_threads, variable, inside, restored = json.loads(out.stdout)
    assert set(inside[0].values()) == {1} and inside[1] == 1  # thread_limit(1)
    assert restored == [before, 2]  # and everything back afterwards
    assert before and set(before.values()) == {2}  # numpy's and scipy's OpenBLAS
    assert set(after) == set(before) and set(after.values()) == {1}
    assert (torch_threads, variable) == (1, "1")
