"""On-disk cache of rendered images: ``.npy`` memory maps plus a JSON manifest.

``materialize`` renders a dataset once into ``images.npy`` (float32 ``(n, 1, H, W)``, or
``(n, 1, D, H, W)`` for volumes), ``labels.npy`` and ``factors.npy`` (float64 ``(F, n)``,
rows in ``FACTORS`` order) next to a ``manifest.json`` that records the spec's fingerprint
(SHA-256), ``n``, ``seed``, ``image_size``, ``volume_size``, ``output`` and a BLAKE2b
digest of the image bytes. Arrays are written and read with ``allow_pickle=False``.

Integrity: the files are written into a fresh hidden folder beside the target, the manifest
last (itself written under a temporary name and renamed), and the folder is renamed into
place only when complete, so an interrupted run leaves the previous cache (or none), never a
mix. Replacing a cache takes two renames (the old folder aside, the new one in); a process
killed between them leaves no folder at the path, and the next :func:`materialize` or
:func:`load_images` of that path finishes the swap (the complete new folder goes into
place). Writers of one path take an exclusive lock on a hidden ``.<name>.lock`` file beside
it (``fcntl.flock``, released by the system when a process dies), and under that lock the
next :func:`materialize` removes the hidden ``.partial`` and ``.old`` folders that killed
runs left. Loading compares the manifest, labels and factors
with the dataset that asks for them and then, with ``verify="full"``, hashes every image
again; ``verify="size"`` checks only the images' shape, dtype and file length. Every
mismatch or damage raises :class:`CacheError` naming the folder, the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch

from .._validation import check_choice, check_int
from .factors import FACTORS

__all__ = [
    "CACHE_FORMAT",
    "VERIFY_MODES",
    "CacheError",
    "load_images",
    "manifest_for",
    "materialize",
]

#: Version of the on-disk layout; bumped when it changes (2: image digest, atomic writes).
CACHE_FORMAT = 2
#: How :func:`load_images` checks the images: hash every byte, or shape and length only.
VERIFY_MODES: tuple[str, ...] = ("full", "size")
_MANIFEST = "manifest.json"
_FILES = ("images.npy", "labels.npy", "factors.npy", _MANIFEST)
_DIGEST = "images_blake2b"
_CHUNK_BYTES = 1 << 24  # images are hashed in chunks of about 16 MB
# POSIX file locks; elsewhere writers do not lock (leftovers are still recovered)
_FCNTL: Any = importlib.import_module("fcntl") if os.name == "posix" else None


class CacheError(ValueError):
    """A cache folder that is damaged, incomplete or made for another dataset."""


def manifest_for(ds: Any) -> dict[str, Any]:
    """What a cache of ``ds`` must record to be reused (a JSON-ready dict)."""
    return {
        "format": CACHE_FORMAT,
        "spec_sha256": ds.spec.fingerprint(),
        "spec": ds.spec.describe(),
        "n": ds.n,
        "seed": ds.seed,
        "image_size": ds.image_size,
        "volume_size": ds.volume_size,
        "output": ds.output,
        "factors": list(FACTORS),
    }


def _factor_table(ds: Any) -> np.ndarray[Any, Any]:
    return np.stack([ds.factors[name].double().numpy() for name in FACTORS])


def _check_replaceable(root: pathlib.Path) -> None:
    """Refuse to replace anything but an empty folder or a cache (never delete user files)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"path must be a folder for the cache; {root} is a file")
    extra = sorted(p.name for p in root.iterdir() if p.name not in _FILES)
    if extra:
        raise FileExistsError(
            f"path must be a new folder, an empty one or a cache written by "
            f"materialize; {root} also holds {extra[:3]} (left untouched)"
        )


def materialize(ds: Any, path: str | pathlib.Path, batch_size: int = 1024) -> pathlib.Path:
    """Render every image of ``ds`` into the folder ``path``; returns ``path``.

    A cache already at ``path`` is replaced only once the new one is complete. A swap that a
    killed process left half done is finished first, and the work folders of killed runs
    beside ``path`` are removed. Two processes materializing one path take turns.

    Raises:
        ValueError: ``batch_size`` is not an int ``>= 1``.
        FileExistsError: ``path`` is a file, or a folder holding other files.
    """
    check_int("batch_size", batch_size, 1)
    root = pathlib.Path(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(root):
        _recover(root)
        _check_replaceable(root)
        # os.mkdir honours the umask (tempfile.mkdtemp would make the cache private).
        partial = root.parent / f".{root.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
        os.mkdir(partial)
        try:
            digest = _write(ds, partial, batch_size)
            manifest = {**manifest_for(ds), _DIGEST: digest}
            # written last, under a temporary name: only a complete folder has a manifest
            _write_text(partial / _MANIFEST, json.dumps(manifest, indent=2))
            _swap(partial, root)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return root


def _write_text(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def _writer_lock(root: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``root`` (waits for another holder)."""
    if _FCNTL is None:  # pragma: no cover
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a") as handle:
        _FCNTL.flock(handle.fileno(), _FCNTL.LOCK_EX)
        try:
            yield
        finally:
            _FCNTL.flock(handle.fileno(), _FCNTL.LOCK_UN)


def _leftovers(root: pathlib.Path, suffix: str) -> list[pathlib.Path]:
    """Hidden work folders of ``root`` (``.<name>.<pid>-<token><suffix>``), sorted by name."""
    prefix = f".{root.name}."
    return sorted(
        p
        for p in root.parent.iterdir()
        if p.name.startswith(prefix)
        and p.name.endswith(suffix)
        and "." not in p.name[len(prefix) : -len(suffix)]
    )


def _recover(root: pathlib.Path) -> None:
    """Finish a swap that a killed process left half done; remove its work folders.

    Call with the writer lock held: every work folder then belongs to a dead process.
    A swap was interrupted between its renames when ``root`` is missing and an ``.old``
    folder exists; its ``.partial`` twin (complete: a swap starts only after the manifest
    is written) goes into place, or the ``.old`` folder goes back when the twin is gone.
    """
    if not root.parent.is_dir():
        return
    if not os.path.lexists(root):
        for old in reversed(_leftovers(root, ".old")):
            twin = old.with_suffix(".partial")
            os.rename(twin if (twin / _MANIFEST).is_file() else old, root)
            break
    for leftover in _leftovers(root, ".partial") + _leftovers(root, ".old"):
        shutil.rmtree(leftover, ignore_errors=True)


def _write(ds: Any, folder: pathlib.Path, batch_size: int) -> str:
    """Write the three arrays into ``folder``; returns the digest of the image bytes."""
    images = np.lib.format.open_memmap(
        folder / "images.npy", mode="w+", dtype=np.float32, shape=(ds.n, *ds.sample_shape)
    )
    digest = hashlib.blake2b(digest_size=32)
    for start in range(0, ds.n, batch_size):
        idx = torch.arange(start, min(ds.n, start + batch_size))
        batch = np.ascontiguousarray(ds.render(idx).numpy(), dtype=np.float32)
        images[start : start + idx.numel()] = batch
        digest.update(batch.data)
    images.flush()
    del images
    np.save(folder / "labels.npy", ds.labels.numpy(), allow_pickle=False)
    np.save(folder / "factors.npy", _factor_table(ds), allow_pickle=False)
    return digest.hexdigest()


def _swap(partial: pathlib.Path, root: pathlib.Path) -> None:
    """Rename the complete ``partial`` folder to ``root``, replacing an older cache."""
    if not root.exists():
        os.rename(partial, root)
        return
    old = partial.with_suffix(".old")
    os.rename(root, old)
    # a process killed here leaves no folder at root: _recover renames partial into place
    os.rename(partial, root)
    shutil.rmtree(old, ignore_errors=True)


def _damaged(root: pathlib.Path, what: str) -> CacheError:
    return CacheError(f"cache at {root} is damaged: {what}; materialize it again")


def _read_manifest(root: pathlib.Path) -> dict[str, Any]:
    path = root / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"cache must contain {_MANIFEST}; none in {root}")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(root, f"{_MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(found, dict):
        raise _damaged(root, f"{_MANIFEST} must hold an object; got {type(found).__name__}")
    return found


def _load_array(
    root: pathlib.Path, name: str, shape: tuple[int, ...], dtype: Any, mmap: bool = False
) -> np.ndarray[Any, Any]:
    path = root / name
    if not path.is_file():
        raise _damaged(root, f"{name} is missing")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # truncated or garbled file
        raise _damaged(root, f"{name} cannot be read ({err})") from None
    if array.shape != shape or array.dtype != dtype:
        raise _damaged(
            root,
            f"{name} must be {np.dtype(dtype)} of shape {shape}; got "
            f"{array.dtype} of shape {array.shape}",
        )
    return array  # type: ignore[no-any-return]


def _chunks(images: np.ndarray[Any, Any]) -> Any:
    rows = max(1, _CHUNK_BYTES // max(1, images[:1].nbytes))
    for start in range(0, len(images), rows):
        yield np.ascontiguousarray(images[start : start + rows])


def _check_digest(root: pathlib.Path, images: np.ndarray[Any, Any], expected: Any) -> None:
    digest = hashlib.blake2b(digest_size=32)
    for chunk in _chunks(images):
        digest.update(chunk.data)
    if digest.hexdigest() == expected:
        return
    nonfinite = sum(
        int((~np.isfinite(c)).reshape(len(c), -1).any(axis=1).sum()) for c in _chunks(images)
    )
    detail = f"; {nonfinite} images hold NaN or inf" if nonfinite else ""
    raise _damaged(
        root,
        f"images.npy differs from what materialize wrote (its BLAKE2b "
        f"digest does not match the manifest{detail})",
    )


class MappedImages:
    """The cached images as a read-only memory map, indexable like the array.

    Pickles as its folder and digest and maps the file again when unpickled, so DataLoader
    workers (spawn or fork) never receive the images themselves; a folder whose manifest
    changed in between raises :class:`CacheError`.
    """

    def __init__(self, root: pathlib.Path, shape: tuple[int, ...], digest: str) -> None:
        self.root, self.shape, self.digest = root, shape, digest
        self.array = self._map()

    def _map(self) -> np.ndarray[Any, Any]:
        if _read_manifest(self.root).get(_DIGEST) != self.digest:
            raise CacheError(
                f"cache at {self.root} changed since it was opened; open the dataset again"
            )
        return _load_array(self.root, "images.npy", self.shape, np.float32, mmap=True)

    def __getitem__(self, index: Any) -> np.ndarray[Any, Any]:
        return self.array[index]  # type: ignore[no-any-return]

    def __getstate__(self) -> tuple[pathlib.Path, tuple[int, ...], str]:
        return self.root, self.shape, self.digest

    def __setstate__(self, state: tuple[pathlib.Path, tuple[int, ...], str]) -> None:
        self.root, self.shape, self.digest = state
        self.array = self._map()


def load_images(
    ds: Any, path: str | pathlib.Path, verify: Literal["full", "size"] = "full"
) -> MappedImages:
    """Memory-map the cached images of ``ds`` after checking manifest, tables and images.

    Args:
        ds: the dataset the cache must belong to.
        path: the folder :func:`materialize` wrote.
        verify: ``"full"`` hashes every image and compares with the manifest's digest (reads
            the whole file once); ``"size"`` checks only the images' shape, dtype and file
            length (no image is read, so modified values go unnoticed).

    Raises:
        FileNotFoundError: no manifest at ``path``.
        CacheError: (a ``ValueError``) the cache was made from another spec, seed, size,
            output or format, its labels or factors differ from the dataset's, or a file is
            missing, truncated, garbled, of the wrong shape or dtype, or (``"full"``) its
            images differ from what was written.
    """
    check_choice("verify", verify, VERIFY_MODES)
    root = pathlib.Path(path).resolve()
    if not os.path.lexists(root) and root.parent.is_dir() and _leftovers(root, ".old"):
        try:
            with _writer_lock(root):  # a swap interrupted by a kill: finish it
                _recover(root)
        except PermissionError:  # a read-only parent: nothing to recover there
            pass
    found = _read_manifest(root)
    if found.get("format") != CACHE_FORMAT:
        raise CacheError(
            f"cache at {root} has format {found.get('format')!r}; this version "
            f"reads format {CACHE_FORMAT}: materialize it again"
        )
    for key, value in manifest_for(ds).items():
        if key != "spec" and found.get(key) != value:
            raise CacheError(
                f"cache at {root} does not match this dataset: {key} must be "
                f"{value!r}; got {found.get(key)!r}"
            )
    digest = found.get(_DIGEST)
    if not isinstance(digest, str):
        raise _damaged(root, f"{_MANIFEST} must record {_DIGEST}; got {digest!r}")
    labels = _load_array(root, "labels.npy", (ds.n,), np.int64)
    table = _load_array(root, "factors.npy", (len(FACTORS), ds.n), np.float64)
    for name, stored, mine in (
        ("labels", labels, ds.labels.numpy()),
        ("factors", table, _factor_table(ds)),
    ):
        if not np.array_equal(stored, mine):
            raise CacheError(
                f"cache at {root} does not match this dataset: its {name} differ "
                "(modified, or made by another version of nodulebench?)"
            )
    images = MappedImages(root, (ds.n, *ds.sample_shape), digest)
    if verify == "full":
        _check_digest(root, images.array, digest)
    return images
