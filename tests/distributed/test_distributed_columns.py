"""Anchor rows against all rows: the per-anchor building block of distributed losses.

A rank's anchors are a contiguous slice ``start:stop`` of the gathered batch. Every
backend that declares ``anchor_subsets`` must return, for ``row_range=(start, stop)``,
exactly the per-anchor results of those rows in the whole-batch call, and the gradient
of any weighting of them must equal the whole-batch gradient of the same weighting.
Single process, no process group needed.
"""

from __future__ import annotations

import pytest
import torch

from nodulebench.kernels import _dense
from nodulebench.kernels.dispatch import BACKENDS, run_per_anchor
from nodulebench.kernels.tiled import supcon_tiled

N, D = 23, 5
ROW_RANGES = [(3, 11), (17, 23), (5, 5)]
KERNELS = {
    "supcon-out": ("supcon", {"temperature": 0.3, "variant": "out"}),
    "supcon-in": ("supcon", {"temperature": 0.3, "variant": "in"}),
    "contrastive": ("contrastive", {"margin": 1.5}),
    "triplet-hard": ("triplet_hard", {"margin": 0.5, "distance": "euclidean"}),
    "triplet-hard-cosine": ("triplet_hard", {"margin": 0.5, "distance": "cosine"}),
    "triplet-all": ("triplet_all", {"margin": 0.5, "distance": "squared_euclidean"}),
    "triplet-semihard": ("triplet_semihard", {"margin": 0.5, "distance": "euclidean"}),
    "multi-similarity": ("multi_similarity", {"base": 0.2, "beta": 10.0}),
}
CASES = [
    (name, backend)
    for name, (loss, _) in KERNELS.items()
    for backend in ("reference", "tiled")
    if loss in BACKENDS[backend].options
]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64))
    return z, torch.randint(0, 4, (N,), generator=gen)


@pytest.mark.parametrize("row_range", ROW_RANGES, ids=str)
@pytest.mark.parametrize(("name", "backend"), CASES, ids=["-".join(case) for case in CASES])
def test_anchor_range_matches_whole_batch(name: str, backend: str, row_range) -> None:
    loss, options = KERNELS[name]
    start, stop = row_range
    z, labels = _inputs()
    weights = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
    block = {"block_size": 4} if backend == "tiled" else {}  # several tiles per row

    whole = z.clone().requires_grad_(True)
    expected = run_per_anchor(loss, whole, labels, backend=backend, **block, **options)
    (expected[0][start:stop] * weights[start:stop]).sum().backward()
    part = z.clone().requires_grad_(True)
    got = run_per_anchor(
        loss, part, labels, backend=backend, row_range=row_range, **block, **options
    )
    (got[0] * weights[start:stop]).sum().backward()

    for value, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(value, reference[start:stop], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(part.grad, whole.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("row_range", [(2, 1), (0, N + 1), (-1, 3), [0, 2], (0.0, 2)], ids=str)
def test_bad_row_range_is_named(row_range) -> None:
    z, labels = _inputs()
    with pytest.raises(ValueError, match="row_range must be a \\(start, stop\\) pair"):
        supcon_tiled(z, labels, temperature=0.1, row_range=row_range)


def test_columns_and_column_labels_come_together() -> None:
    z, labels = _inputs()
    with pytest.raises(ValueError, match="columns and column_labels must be given together"):
        _dense.supcon_per_anchor(z, labels, temperature=0.1, variant="out", columns=z)
