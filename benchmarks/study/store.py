"""The results folder: atomic writes, per-run records, resume bookkeeping."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`atomic_write_npz` (pickles refused)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


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

    def is_done(self, run_id: str) -> bool:
        """A run is done once both of its files exist (the JSON is written last)."""
        return self.json_path(run_id).exists() and self.npz_path(run_id).exists()

    def save(self, run_id: str, record: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Store a finished run: arrays first, then the record that marks it done."""
        atomic_write_npz(self.npz_path(run_id), arrays)
        atomic_write_json(self.json_path(run_id), record)

    def load(self, run_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A finished run's record and arrays."""
        record = json.loads(self.json_path(run_id).read_text())
        return record, load_npz(self.npz_path(run_id))
