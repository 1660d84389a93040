"""Worker processes start their BLAS libraries with their share of the threads."""

from __future__ import annotations

import os

import pytest

from study.runner import BLAS_THREAD_VARIABLES, blas_threads


def test_blas_threads_sets_every_variable_and_restores_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with blas_threads(1):
        assert [os.environ[name] for name in BLAS_THREAD_VARIABLES] == ["1"] * 3
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7"
    assert "MKL_NUM_THREADS" not in os.environ


def test_blas_threads_restores_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(RuntimeError), blas_threads(2):
        raise RuntimeError("a worker failed to start")
    assert "OMP_NUM_THREADS" not in os.environ
