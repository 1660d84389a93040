"""The results folder: unreadable run files are named and redone; modes follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from study.store import RECORD_KEYS, CorruptRunError, RunStore, atomic_write_json


def saved(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path)
    record = {key: 0 for key in RECORD_KEYS} | {"run_id": "e__l__seed0"}
    store.save("e__l__seed0", record, {"gram.pool": np.eye(3, dtype=np.float32)})
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
            "lacks the key(s) experiment, loss",
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
