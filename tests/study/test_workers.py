"""Worker processes start with their share of BLAS threads and a malloc that keeps memory."""

from __future__ import annotations

import os

import pytest

from study.runner import environment, worker_environment


def test_worker_environment_limits_blas_threads_and_keeps_freed_memory() -> None:
    variables = worker_environment(3)
    assert {
        variables[name] for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
    } == {"3"}
    assert int(variables["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 30


def test_environment_sets_every_variable_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with environment({"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}):
        assert (os.environ["OPENBLAS_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]) == ("1", "1")
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7"
    assert "MKL_NUM_THREADS" not in os.environ


def test_environment_restores_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(RuntimeError), environment({"OMP_NUM_THREADS": "2"}):
        raise RuntimeError("a worker failed to start")
    assert "OMP_NUM_THREADS" not in os.environ
