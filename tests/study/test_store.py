"""The results folder: unreadable run files are named and redone; modes follow the umask."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from study.models import STAGES
from study.store import (
    ARRAY_KEYS,
    CorruptRunError,
    RunStore,
    StudyLockedError,
    StudyWriteError,
    atomic_write_json,
    lock_results_folder,
)

RID = "e__l__seed0"


def _metrics() -> dict:
    one = {
        "accuracy": 0.75,
        "balanced_accuracy": 0.7,
        "worst_group_accuracy": 0.5,
        "group_accuracy": {"benign-aligned": 0.9},
        "roc_auc": None,  # undefined metrics may be null
    }
    return {"iid": dict(one), "decorrelated": dict(one)}


def whole_record() -> dict:
    """A record with every key a finished run writes (the shape run_one gives)."""
    return {
        "run_id": RID,
        "experiment": "e",
        "shortcut": "diameter_mm",
        "strength": 0.9,
        "loss": "l",
        "seed": 0,
        "metrics": _metrics(),
        "heads": {"linear": _metrics(), "dfr": _metrics()},
        "loss_history": [0.7, 0.5],
        "train_seconds": 1.0,
        "total_seconds": 2.0,
        "probes": [],
        "sensitivity": [],
        "saliency": {"layer": "encoder.stage2", "attributed": 0},
    }


def whole_arrays() -> dict[str, np.ndarray]:
    arrays = {f"gram.{stage}": np.eye(3, dtype=np.float32) for stage in STAGES}
    return arrays | {key: np.zeros((2, 2), dtype=np.float32) for key in ARRAY_KEYS}


def saved(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path)
    store.save(RID, whole_record(), whole_arrays())
    return store


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda s: s.json_path("e__l__seed0").write_text('{"run_id": "e__l'),
            "e__l__seed0.json cannot be read as JSON",
        ),
        (lambda s: s.json_path("e__l__seed0").write_bytes(b"\xff\xfe"), "cannot be read as JSON"),
        (lambda s: s.json_path("e__l__seed0").write_text("[1, 2]"), "does not hold a run record"),
        (
            lambda s: s.json_path("e__l__seed0").write_text('{"run_id": "e__l__seed0"}'),
            "lacks the key(s) experiment, shortcut",
        ),
        (
            lambda s: s.json_path("e__l__seed0").write_text(
                s.json_path("e__l__seed0").read_text().replace("e__l__seed0", "x__y__seed1")
            ),
            "holds the record of run 'x__y__seed1'",
        ),
        (
            lambda s: s.npz_path("e__l__seed0").write_bytes(
                s.npz_path("e__l__seed0").read_bytes()[:50]
            ),
            "e__l__seed0.npz cannot be read as .npz",
        ),
    ],
)
def test_damaged_run_is_named_and_not_done(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    store = saved(tmp_path)
    assert store.is_done("e__l__seed0")
    damage(store)
    assert store.exists("e__l__seed0") and not store.is_done("e__l__seed0")
    problem = store.problem("e__l__seed0")
    assert problem is not None and message in problem
    with pytest.raises(CorruptRunError, match="e__l__seed0"):
        store.load("e__l__seed0")
    store.discard("e__l__seed0")
    assert not store.exists("e__l__seed0")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_the_umask_allows(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode)
    assert mode == 0o666 & ~umask


def _edit_record(change):  # type: ignore[no-untyped-def]
    def damage(store: RunStore) -> None:
        record = json.loads(store.json_path(RID).read_text())
        change(record)
        store.json_path(RID).write_text(json.dumps(record))

    return damage


def _edit_arrays(change):  # type: ignore[no-untyped-def]
    def damage(store: RunStore) -> None:
        arrays = whole_arrays()
        change(arrays)
        np.savez(store.npz_path(RID), **arrays)

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_edit_record(lambda r: r.pop("saliency")), "json lacks the key(s) saliency"),
        (_edit_record(lambda r: r.update(metrics=None)), "metrics must be a non-empty object"),
        (_edit_record(lambda r: r.update(metrics={})), "metrics must be a non-empty object"),
        (
            _edit_record(lambda r: r["metrics"]["iid"].pop("accuracy")),
            "metrics.iid.accuracy is missing or not a value (got None)",
        ),
        (
            _edit_record(lambda r: r["metrics"]["iid"].update(worst_group_accuracy=None)),
            "metrics.iid.worst_group_accuracy is missing or not a value",
        ),
        (_edit_record(lambda r: r["heads"].pop("dfr")), "heads.dfr must be a non-empty object"),
        (_edit_record(lambda r: r.update(seed="0")), "seed must be an integer; got '0'"),
        (_edit_record(lambda r: r.update(loss_history=[])), "loss_history must be a non-empty"),
        (
            _edit_record(lambda r: r.update(loss_history=[float("nan")])),
            "loss_history must be a non-empty list of finite numbers",
        ),
        (_edit_record(lambda r: r.update(probes=None)), "probes must be a list; got None"),
        (_edit_arrays(lambda a: a.pop("gram.stage3")), "npz lacks the array(s) gram.stage3"),
        (_edit_arrays(lambda a: a.pop("projection")), "npz lacks the array(s) projection"),
        (
            _edit_arrays(lambda a: a.update({"gram.pool": np.ones((3, 2), np.float32)})),
            "array gram.pool must be a finite square matrix; got shape (3, 2)",
        ),
        (
            _edit_arrays(lambda a: a.update({"gram.pool": np.full((3, 3), np.nan, np.float32)})),
            "array gram.pool must be a finite square matrix",
        ),
        (
            _edit_arrays(lambda a: a.update(projection=np.zeros((0, 2), np.float32))),
            "array projection is empty",
        ),
    ],
)
def test_incomplete_run_is_named_and_redone_on_resume(
    tmp_path: Path, damage, message: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """A record or arrays that parse but lack something: resume names it and redoes the run."""
    from study.runner import _finished

    store = saved(tmp_path)
    assert _finished(store, RID)
    damage(store)
    problem = store.problem(RID)
    assert problem is not None and message in problem, problem
    with caplog.at_level(logging.WARNING, logger="study"):
        assert not _finished(store, RID)
    assert message in caplog.text and "the run is done again" in caplog.text
    assert not store.exists(RID)  # discarded: the run trains again


def test_truncated_npz_is_redone(tmp_path: Path) -> None:
    store = saved(tmp_path)
    data = store.npz_path(RID).read_bytes()
    for keep in (len(data) // 3, len(data) - 30):
        store.npz_path(RID).write_bytes(data[:keep])
        problem = store.problem(RID)
        assert problem is not None and f"{RID}.npz" in problem


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free disk space"),
        (errno.EROFS, "make the folder writable"),
        (errno.EACCES, "make the folder writable"),
    ],
)
@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_failed_write_is_named_and_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str, where: str
) -> None:
    """A full disk or a read-only folder: a named error, no temporary file, old file kept."""
    store = saved(tmp_path)
    before = store.json_path(RID).read_bytes()

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile if where == "mkstemp" else os, f"{where}", fail)
    with pytest.raises(StudyWriteError) as info:
        store.save(RID, whole_record() | {"seed": 1}, whole_arrays())
    message = str(info.value)
    assert f"in {store.runs}" in message and fix in message and os.strerror(code) in message
    assert "run the same command again to resume" in message
    monkeypatch.undo()
    assert store.json_path(RID).read_bytes() == before and store.is_done(RID)
    assert sorted(p.name for p in store.runs.iterdir()) == [f"{RID}.json", f"{RID}.npz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_is_named(tmp_path: Path) -> None:
    store = saved(tmp_path)
    store.runs.chmod(0o500)
    try:
        with pytest.raises(StudyWriteError, match="make the folder writable"):
            store.save("e__l__seed1", whole_record() | {"run_id": "e__l__seed1"}, whole_arrays())
    finally:
        store.runs.chmod(0o700)


_HOLDER = """
import fcntl, os, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
handle.seek(0); handle.truncate(); handle.write(f"{os.getpid()}\\n"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_study_on_a_folder_is_refused_and_a_dead_holder_taken_over(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            StudyLockedError, match=rf"in use by another study \(process {holder.pid}\)"
        ):
            lock_results_folder(out)
    finally:
        holder.kill()  # a kill -9: the lock file stays, naming the dead process
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    lock = lock_results_folder(out)  # the stale lock is taken over
    try:
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        # a second holder, even in this process, is refused while the first is open
        with pytest.raises(StudyLockedError, match=f"process {os.getpid()}"):
            lock_results_folder(out)
    finally:
        lock.close()
    lock_results_folder(out).close()  # released on close


def test_shards_share_the_folder_but_exclude_a_whole_study_and_their_own_twin(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    first, second = lock_results_folder(out, (1, 2)), lock_results_folder(out, (2, 2))
    try:
        report = lock_results_folder(out, report_only=True)  # beside running shards
        report.close()
        with pytest.raises(StudyLockedError, match="in use by another study"):
            lock_results_folder(out)  # a whole (or --fresh) study
        with pytest.raises(StudyLockedError, match="shard-1-of-2"):
            lock_results_folder(out, (1, 2))  # the same shard twice
    finally:
        first.close()
        second.close()
    lock_results_folder(out).close()  # every lock released
