"""The results folder: atomic writes, per-run records, resume bookkeeping.

A run is done when its record and arrays both exist and read back whole. A file that
does not (truncated, corrupt, a record of another run) is reported by name and the run is
done again; files are written atomically with the permissions the umask allows.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
RECORD_KEYS = ("run_id", "experiment", "loss", "seed", "metrics", "heads", "loss_history")


class CorruptRunError(RuntimeError):
    """A run file that exists but cannot be read back; the message names the file."""


class RunStore:
    """One folder per study: ``runs/<run_id>.json`` and ``.npz`` per finished run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"

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
            self.load(run_id)
        except CorruptRunError as err:
            return str(err)
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
