"""On-disk cache of rendered images: ``.npy`` memory maps plus a JSON manifest.

``materialize`` renders a dataset once into ``images.npy`` (float32 ``(n, 1, H, W)``, or
``(n, 1, D, H, W)`` for volumes), ``labels.npy`` and ``factors.npy`` (float64 ``(F, n)``,
rows in ``FACTORS`` order) next to a ``manifest.json`` that records the spec's fingerprint
(SHA-256), ``n``, ``seed``, ``image_size``, ``volume_size`` and ``output``. Loading
compares the manifest with the dataset that asks for it and refuses a mismatch. Arrays are
written and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import torch

from .factors import FACTORS

__all__ = ["CACHE_FORMAT", "load_images", "manifest_for", "materialize"]

#: Version of the on-disk layout; bumped when it changes.
CACHE_FORMAT = 1
_MANIFEST = "manifest.json"


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


def materialize(ds: Any, path: str | pathlib.Path, batch_size: int = 1024) -> pathlib.Path:
    """Render every image of ``ds`` into ``path`` (created if needed); returns ``path``."""
    root = pathlib.Path(path)
    root.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(root / "images.npy", mode="w+", dtype=np.float32,
                                       shape=(ds.n, *ds.sample_shape))
    for start in range(0, ds.n, batch_size):
        idx = torch.arange(start, min(ds.n, start + batch_size))
        images[start:start + idx.numel()] = ds.render(idx).numpy()
    images.flush()
    del images
    np.save(root / "labels.npy", ds.labels.numpy(), allow_pickle=False)
    table = np.stack([ds.factors[name].double().numpy() for name in FACTORS])
    np.save(root / "factors.npy", table, allow_pickle=False)
    # the manifest is written last: its presence marks a complete cache
    (root / _MANIFEST).write_text(json.dumps(manifest_for(ds), indent=2))
    return root


def load_images(ds: Any, path: str | pathlib.Path) -> np.ndarray[Any, Any]:
    """Memory-map the cached images of ``ds`` after checking manifest and tables.

    Raises:
        FileNotFoundError: no complete cache at ``path``.
        ValueError: the cache was made from another spec, seed, size or output, or its
            labels / factors differ from the dataset's.
    """
    root = pathlib.Path(path)
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"cache must contain {_MANIFEST}; none in {root}")
    found = json.loads(manifest_path.read_text())
    expected = manifest_for(ds)
    for key, value in expected.items():
        if key != "spec" and found.get(key) != value:
            raise ValueError(f"cache at {root} does not match this dataset: {key} must be "
                             f"{value!r}; got {found.get(key)!r}")
    labels = np.load(root / "labels.npy", allow_pickle=False)
    table = np.load(root / "factors.npy", allow_pickle=False)
    mine = np.stack([ds.factors[name].double().numpy() for name in FACTORS])
    if not (np.array_equal(labels, ds.labels.numpy()) and np.array_equal(table, mine)):
        raise ValueError(f"cache at {root} does not match this dataset: labels or factors "
                         "differ (made by another version of nodulebench?)")
    images = np.load(root / "images.npy", mmap_mode="r", allow_pickle=False)
    shape = (ds.n, *ds.sample_shape)
    if images.shape != shape or images.dtype != np.float32:
        raise ValueError(f"cache at {root} does not match this dataset: images must be float32 "
                         f"{shape}; got {images.dtype} {images.shape}")
    return images  # type: ignore[no-any-return]
