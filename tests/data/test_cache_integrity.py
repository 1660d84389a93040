"""The image cache: atomic writes, a content digest checked on load, a named error per damage."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import CacheError

SPEC = NoduleSpec().with_shortcut("diameter_mm", 0.8)
N, SIZE = 12, 16


def _dataset(seed: int = 3) -> SyntheticNodules:
    return SyntheticNodules(SPEC, n=N, seed=seed, image_size=SIZE)


def _open(path: Path, verify: str = "full", seed: int = 3) -> SyntheticNodules:
    return SyntheticNodules(SPEC, n=N, seed=seed, image_size=SIZE, cache=path, verify_cache=verify)  # type: ignore[arg-type]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    _dataset().materialize(tmp_path / "c", batch_size=5)
    return tmp_path / "c"


def _images(path: Path) -> np.ndarray:
    return np.load(path / "images.npy", mmap_mode="r+")


def test_manifest_records_a_digest_and_both_modes_load(cache: Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["format"] == 2 and len(manifest["images_blake2b"]) == 64
    expected = _dataset().render(range(N))
    for verify in ("full", "size"):
        torch.testing.assert_close(_open(cache, verify).render(range(N)), expected, rtol=0, atol=0)


def test_digest_does_not_depend_on_batch_size(tmp_path: Path, cache: Path) -> None:
    _dataset().materialize(tmp_path / "d", batch_size=N)
    digest = [
        json.loads((p / "manifest.json").read_text())["images_blake2b"]
        for p in (cache, tmp_path / "d")
    ]
    assert digest[0] == digest[1]


def test_interrupted_rematerialize_keeps_the_previous_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _dataset(seed=4)
    calls = []
    real_render = other.render

    def failing_render(indices, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after one batch was written
        return real_render(indices, *args, **kwargs)

    monkeypatch.setattr(other, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        other.materialize(cache, batch_size=5)
    assert len(calls) == 2
    # the old cache is whole and still opens, with its own images; no partial folder is left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]
    torch.testing.assert_close(
        _open(cache).render(range(N)), _dataset().render(range(N)), rtol=0, atol=0
    )
    with pytest.raises(CacheError, match="seed must be 4; got 3"):
        _open(cache, seed=4)


def test_rematerialize_replaces_a_cache(cache: Path) -> None:
    _dataset(seed=4).materialize(cache)
    torch.testing.assert_close(
        _open(cache, seed=4).render(range(N)), _dataset(seed=4).render(range(N)), rtol=0, atol=0
    )
    assert sorted(p.name for p in cache.parent.iterdir()) == [".c.lock", "c"]


def test_images_overwritten_under_a_stale_manifest_are_caught(cache: Path) -> None:
    # what an interrupted in-place re-materialize used to leave behind
    _images(cache)[:5] = _dataset(seed=4).render(range(5)).numpy()
    with pytest.raises(CacheError, match=r"images\.npy differs .* BLAKE2b digest"):
        _open(cache)
    # the cheap mode documents that it does not read the values
    assert _open(cache, "size").n == N


def test_nan_image_is_named(cache: Path) -> None:
    _images(cache)[7, 0, 3, 3] = np.nan
    with pytest.raises(CacheError, match="1 images hold NaN or inf"):
        _open(cache)


def test_swapped_images_are_caught(cache: Path) -> None:
    images = _images(cache)
    images[[0, 1]] = images[[1, 0]].copy()
    with pytest.raises(CacheError, match="digest does not match"):
        _open(cache)


@pytest.mark.parametrize("name", ["images.npy", "labels.npy", "factors.npy"])
@pytest.mark.parametrize("keep", [0.5, 0.99, 40])
@pytest.mark.parametrize("verify", ["full", "size"])
def test_truncated_array_is_named(cache: Path, name: str, keep: float, verify: str) -> None:
    path = cache / name
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if keep < 1 else int(keep)])
    with pytest.raises(CacheError, match=rf"damaged: {name} cannot be read"):
        _open(cache, verify)


@pytest.mark.parametrize("name", ["images.npy", "labels.npy", "factors.npy"])
def test_missing_array_is_named(cache: Path, name: str) -> None:
    (cache / name).unlink()
    with pytest.raises(CacheError, match=rf"{name} is missing"):
        _open(cache)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": 2, "n": 1', "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        (b"[1, 2]", "must hold an object; got list"),
    ],
)
def test_damaged_manifest_is_named(cache: Path, content: bytes, message: str) -> None:
    (cache / "manifest.json").write_bytes(content)
    with pytest.raises(CacheError, match=rf"manifest\.json {message}"):
        _open(cache)


def test_manifest_without_digest_or_of_another_format(cache: Path) -> None:
    path = cache / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(CacheError, match="has format 1; this version reads format 2"):
        _open(cache)
    del manifest["images_blake2b"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="must record images_blake2b"):
        _open(cache)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((N, 1, SIZE, SIZE), np.float64),
        ((N, 1, SIZE, SIZE), np.float16),
        ((N, 1, SIZE + 1, SIZE), np.float32),
        ((N - 1, 1, SIZE, SIZE), np.float32),
    ],
)
def test_images_of_wrong_shape_or_dtype(cache: Path, shape: tuple[int, ...], dtype: type) -> None:
    np.save(cache / "images.npy", np.zeros(shape, dtype), allow_pickle=False)
    with pytest.raises(CacheError, match=r"images\.npy must be float32 of shape"):
        _open(cache, "size")


def test_tables_of_wrong_dtype_or_values(cache: Path) -> None:
    labels = np.load(cache / "labels.npy")
    np.save(cache / "labels.npy", labels.astype(np.int32))
    with pytest.raises(CacheError, match=r"labels\.npy must be int64"):
        _open(cache)
    np.save(cache / "labels.npy", 1 - labels)
    with pytest.raises(CacheError, match="its labels differ"):
        _open(cache)
    np.save(cache / "labels.npy", labels)
    factors = np.load(cache / "factors.npy")
    factors[0, 0] += 1.0
    np.save(cache / "factors.npy", factors)
    with pytest.raises(CacheError, match="its factors differ"):
        _open(cache)


def test_materialize_never_replaces_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"also holds \['notes.txt'\]"):
        _dataset().materialize(folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        _dataset().materialize(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    _dataset().materialize(tmp_path / "empty")
    assert _open(tmp_path / "empty").n == N


@pytest.mark.parametrize("batch_size", [0, -3])
def test_materialize_batch_size_must_be_positive(tmp_path: Path, batch_size: int) -> None:
    with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1; got {batch_size}"):
        _dataset().materialize(tmp_path / "c", batch_size=batch_size)
    with pytest.raises(TypeError, match="batch_size must be an int; got float"):
        _dataset().materialize(tmp_path / "c", batch_size=2.0)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


def test_verify_cache_must_be_a_mode(cache: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"verify_cache must be one of 'full', 'size'; "
        r"got 'ful' \(did you mean 'full'\?\)",
    ):
        _open(cache, "ful")


def test_cache_folder_follows_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        _dataset().materialize(tmp_path / "c")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o755


def test_pickled_cached_dataset_maps_the_file_again(cache: Path) -> None:
    ds = _open(cache)
    blob = pickle.dumps(ds)
    assert len(blob) < N * SIZE * SIZE * 4  # the images themselves are not pickled
    torch.testing.assert_close(
        pickle.loads(blob).render(range(N)), ds.render(range(N)), rtol=0, atol=0
    )
    _dataset(seed=4).materialize(cache)
    with pytest.raises(CacheError, match="changed since it was opened"):
        pickle.loads(blob)


class _Killed(BaseException):
    """A planted kill: raised at one file operation and at every one after it."""


_FILE_OPS = (
    (os, "mkdir"),
    (os, "rename"),
    (os, "replace"),
    (os, "fsync"),
    (np, "save"),
    (np.lib.format, "open_memmap"),
    (shutil, "rmtree"),
)


def _plant_kill(monkeypatch: pytest.MonkeyPatch, at: int) -> list[str]:
    """Make file operation number ``at`` (and every later one) die; returns the ops seen."""
    seen: list[str] = []
    for owner, name in _FILE_OPS:
        real = getattr(owner, name)

        def op(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(_name)
            if len(seen) > at:
                raise _Killed(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, op)
    return seen


def test_kill_between_any_two_file_operations_leaves_a_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill a re-materialize at every file operation: the path always opens (old or new
    cache, never none and never a mix), and the next materialize removes every leftover."""
    with monkeypatch.context() as m:
        ops = _plant_kill(m, at=10**9)
        _dataset(seed=4).materialize(cache, batch_size=5)
    assert {"rename", "replace", "rmtree", "save", "open_memmap", "mkdir"} <= set(ops)
    outcomes = []
    for at in range(len(ops)):
        _dataset(seed=3).materialize(cache, batch_size=N)  # the old cache, whole
        with monkeypatch.context() as m:
            _plant_kill(m, at)
            with pytest.raises(_Killed):
                _dataset(seed=4).materialize(cache, batch_size=5)
        outcomes.append(
            ("gone" if not cache.exists() else "")
            + ",".join(sorted(p.suffix for p in tmp_path.iterdir() if p.name.startswith(".c.")))
        )
        opened = []
        for seed in (3, 4):
            try:
                ds = _open(cache, seed=seed)
            except CacheError:
                continue
            torch.testing.assert_close(
                ds.render(range(N)), _dataset(seed).render(range(N)), rtol=0, atol=0
            )
            opened.append(seed)
        # killed once the old folder was set aside, the swap is finished: the new cache
        assert opened == [4 if at > ops.index("rename") else 3], (at, ops)
        _dataset(seed=4).materialize(cache, batch_size=N)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]
        _open(cache, seed=4)
    # the planted kills did hit a half-done swap and left work folders behind
    assert any(o.startswith("gone") for o in outcomes)
    assert any(".partial" in o for o in outcomes) and any(".old" in o for o in outcomes)


def test_leftovers_of_killed_runs_are_removed_and_others_kept(tmp_path: Path, cache: Path) -> None:
    """Work folders of this path go; another cache's (whose name starts alike) stay."""
    (tmp_path / ".c.99-abcd.partial").mkdir()
    (tmp_path / ".c.98-abcd.old").mkdir()
    (tmp_path / ".c.x.97-abcd.partial").mkdir()  # a work folder of the cache "c.x"
    _dataset(seed=4).materialize(cache, batch_size=N)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", ".c.x.97-abcd.partial", "c"]


def test_swap_interrupted_before_the_new_folder_has_a_manifest_restores_the_old(
    tmp_path: Path, cache: Path
) -> None:
    """The old folder aside and no complete twin: the old cache goes back on open."""
    os.rename(cache, tmp_path / ".c.5-beef.old")
    (tmp_path / ".c.5-beef.partial").mkdir()
    _open(cache, seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.lock", "c"]
