"""The results folder: atomic writes, per-run records, resume bookkeeping, a folder lock.

A run is done when its record and arrays both exist, read back whole and hold everything a
finished run writes (:func:`record_problem`, :func:`arrays_problem`). A file that does not
(truncated, corrupt, a record of another run, a missing key or a ``null`` where a value
belongs, a missing or malformed array) is reported by name and the run is done again; files
are written atomically with the permissions the umask allows. A write that fails (a
read-only folder, a full disk) raises :class:`StudyWriteError` naming the folder and what to
do; the files already written stay consistent. :func:`lock_results_folder` keeps a second
study off a results folder while one runs.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from .models import STAGES

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: results folders are not locked
    fcntl = None  # type: ignore[assignment]


class StudyWriteError(RuntimeError):
    """A results file that cannot be written; the message names the folder and the fix."""


def _write_error(path: Path, err: OSError) -> StudyWriteError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or choose another --out)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable (or choose another --out)"
    else:
        fix = "fix the folder (or choose another --out)"
    return StudyWriteError(
        f"cannot write {path.name} in {path.parent} ({err.strerror or err}): {fix}, then run "
        "the same command again to resume; finished runs are kept"
    )


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Raises:
        StudyWriteError: the folder cannot be written (read-only, full, missing rights).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        os.fchmod(fd, _file_mode())  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` (no pickled objects), atomically."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`atomic_write_npz` (pickles refused)."""
    # Opened here, so that the handle is closed even when numpy rejects the contents.
    with path.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


#: Keys every run record carries.
RECORD_KEYS = (
    "run_id",
    "experiment",
    "shortcut",
    "strength",
    "loss",
    "seed",
    "metrics",
    "heads",
    "loss_history",
    "train_seconds",
    "total_seconds",
    "probes",
    "sensitivity",
    "saliency",
)
#: The linear heads refit on every encoder besides the model's own (``metrics``).
HEADS = ("linear", "dfr")
#: What every test set's metrics hold (other metrics may be ``null`` when undefined).
METRIC_KEYS = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "group_accuracy")
#: Arrays every run writes besides one ``gram.<stage>`` per encoder stage.
ARRAY_KEYS = ("projection", "saliency.maps", "saliency.images", "saliency.spicules")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_problem(where: str, metrics: Any) -> str | None:
    if not isinstance(metrics, dict) or not metrics:
        return f"{where} must be a non-empty object of test sets; got {metrics!r:.60}"
    for test, values in metrics.items():
        if not isinstance(values, dict):
            return f"{where}.{test} must be an object of metrics; got {values!r:.60}"
        for key in METRIC_KEYS:
            value = values.get(key)
            ok = isinstance(value, dict) if key == "group_accuracy" else _is_number(value)
            if not ok:
                return f"{where}.{test}.{key} is missing or not a value (got {value!r:.60})"
    return None


def record_problem(record: dict[str, Any]) -> str | None:
    """What a run record lacks to be a finished run's, or ``None`` when it is whole."""
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        return f"lacks the key(s) {', '.join(missing)}"
    for key in ("run_id", "experiment", "shortcut", "loss"):
        if not isinstance(record[key], str) or not record[key]:
            return f"{key} must be a non-empty string; got {record[key]!r:.60}"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"seed must be an integer; got {record['seed']!r:.60}"
    for key in ("strength", "train_seconds", "total_seconds"):
        if not _is_number(record[key]):
            return f"{key} must be a number; got {record[key]!r:.60}"
    problem = _metrics_problem("metrics", record["metrics"])
    if problem:
        return problem
    heads = record["heads"]
    if not isinstance(heads, dict):
        return f"heads must be an object; got {heads!r:.60}"
    for head in HEADS:
        problem = _metrics_problem(f"heads.{head}", heads.get(head))
        if problem:
            return problem
    history = record["loss_history"]
    if not (
        isinstance(history, list)
        and history
        and all(_is_number(v) and math.isfinite(v) for v in history)
    ):
        return f"loss_history must be a non-empty list of finite numbers; got {history!r:.60}"
    for key, kind in (("probes", list), ("sensitivity", list), ("saliency", dict)):
        if not isinstance(record[key], kind):
            return f"{key} must be a {kind.__name__}; got {record[key]!r:.60}"
    return None


def arrays_problem(arrays: dict[str, np.ndarray], stages: tuple[str, ...] = ()) -> str | None:
    """What a run's arrays lack, or ``None`` when they are whole.

    Whole: each of :data:`ARRAY_KEYS`, a finite square ``gram.<stage>`` for every stage in
    ``stages``, no array empty.
    """
    wanted = [*ARRAY_KEYS, *(f"gram.{stage}" for stage in stages)]
    missing = [key for key in wanted if key not in arrays]
    if missing:
        return f"lacks the array(s) {', '.join(missing)}"
    for key, value in arrays.items():
        if value.size == 0:
            return f"array {key} is empty"
        if key.startswith("gram."):
            square = value.ndim == 2 and value.shape[0] == value.shape[1]
            if not square or not bool(np.isfinite(value).all()):
                return f"array {key} must be a finite square matrix; got shape {value.shape}"
    return None


class CorruptRunError(RuntimeError):
    """A run file that exists but cannot be read back; the message names the file."""


class RunStore:
    """One folder per study: ``runs/<run_id>.json`` and ``.npz`` per finished run."""

    def __init__(self, root: Path, stages: tuple[str, ...] = STAGES) -> None:
        self.root = root
        self.runs = root / "runs"
        #: Encoder stages whose Gram matrix every run's arrays must hold.
        self.stages = stages

    def json_path(self, run_id: str) -> Path:
        """Where a run's record lives."""
        return self.runs / f"{run_id}.json"

    def npz_path(self, run_id: str) -> Path:
        """Where a run's arrays (layer features, projections, saliency) live."""
        return self.runs / f"{run_id}.npz"

    def exists(self, run_id: str) -> bool:
        """Whether both of a run's files exist (they may still be unreadable)."""
        return self.json_path(run_id).exists() and self.npz_path(run_id).exists()

    def is_done(self, run_id: str) -> bool:
        """A run is done once both of its files exist and read back whole."""
        return self.exists(run_id) and self.problem(run_id) is None

    def problem(self, run_id: str) -> str | None:
        """What is wrong with an existing run's files, naming the file; ``None`` if nothing."""
        try:
            record, arrays = self.load(run_id)
        except CorruptRunError as err:
            return str(err)
        problem = record_problem(record)
        if problem:
            return f"{self.json_path(run_id)} {problem}"
        problem = arrays_problem(arrays, self.stages)
        if problem:
            return f"{self.npz_path(run_id)} {problem}"
        return None

    def discard(self, run_id: str) -> None:
        """Remove a run's files, so that it is done again."""
        for path in (self.json_path(run_id), self.npz_path(run_id)):
            path.unlink(missing_ok=True)

    def save(self, run_id: str, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Store a finished run: arrays first, then the record that marks it done."""
        atomic_write_npz(self.npz_path(run_id), arrays)
        atomic_write_json(self.json_path(run_id), record)

    def load_record(self, run_id: str) -> dict[str, Any]:
        """A finished run's record; ``CorruptRunError`` naming the file if unreadable."""
        path = self.json_path(run_id)
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptRunError(f"{path} cannot be read as JSON ({err})") from err
        if not isinstance(record, dict):
            raise CorruptRunError(f"{path} does not hold a run record (a JSON object)")
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise CorruptRunError(f"{path} lacks the key(s) {', '.join(missing)}")
        if record["run_id"] != run_id:
            raise CorruptRunError(f"{path} holds the record of run {record['run_id']!r}")
        return record

    def load_arrays(self, run_id: str) -> dict[str, np.ndarray]:
        """A finished run's arrays; ``CorruptRunError`` naming the file if unreadable."""
        path = self.npz_path(run_id)
        try:
            return load_npz(path)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise CorruptRunError(f"{path} cannot be read as .npz ({err})") from err

    def load(self, run_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A finished run's record and arrays."""
        return self.load_record(run_id), self.load_arrays(run_id)


class StudyLockedError(RuntimeError):
    """A results folder that another running study holds."""


class ResultsLock:
    """The locks a study holds on its results folder, until :meth:`close`."""

    def __init__(self, handles: list[IO[str]]) -> None:
        self._handles = handles

    def close(self) -> None:
        """Release every lock (closing a lock file releases its ``flock``)."""
        for handle in self._handles:
            handle.close()


def lock_results_folder(
    root: Path, shard: tuple[int, int] = (1, 1), *, report_only: bool = False
) -> ResultsLock:
    """Lock ``root`` for one study: exclusively, or shared by the shards of one study.

    A whole study holds ``root/.lock`` exclusively. Shards (``shard = (K, N)``, N > 1) hold
    it shared, so that the N shards of one job array can write into one folder while a
    whole study (or a ``--fresh`` one) cannot start beside them; each shard also holds
    ``root/.lock-shard-K-of-N`` exclusively, so one shard does not run twice. A report-only
    call holds ``.lock`` shared. The locks are the system's (``fcntl.flock``): they end
    with the process that holds them, so a lock file left by a killed study is simply taken
    over. An exclusive holder records its process id, which the error names.

    Raises:
        StudyLockedError: another live process holds a conflicting lock.
        StudyWriteError: the folder or its lock file cannot be created.
    """
    k, n = shard
    if n == 1 and not report_only:
        return ResultsLock([_flock(root, ".lock", exclusive=True)])
    shared = _flock(root, ".lock", exclusive=False)
    if report_only:
        return ResultsLock([shared])
    try:
        own = _flock(root, f".lock-shard-{k}-of-{n}", exclusive=True)
    except (StudyLockedError, StudyWriteError):
        shared.close()
        raise
    return ResultsLock([shared, own])


def _flock(root: Path, name: str, *, exclusive: bool) -> IO[str]:
    path = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open: it is the lock
    except OSError as err:
        raise StudyWriteError(
            f"cannot write to the output folder {root} ({err.strerror or err}); choose "
            "another --out or make it writable"
        ) from err
    if fcntl is None:  # pragma: no cover
        return handle  # type: ignore[unreachable]
    try:
        fcntl.flock(
            handle.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        )
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown: shards of a study hold it shared"
        handle.close()
        what = "another study" if name == ".lock" else f"another process running {name[6:]}"
        raise StudyLockedError(
            f"{root} is in use by {what} (process {holder}); wait for it to finish "
            "or choose another --out"
        ) from None
    if exclusive:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle
