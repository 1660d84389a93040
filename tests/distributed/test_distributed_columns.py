"""Anchor rows against a column set: the per-anchor building block of distributed losses.

A rank's anchors are a contiguous slice ``start:stop`` of the gathered batch. Computing
them against all columns must give exactly the single-process per-anchor losses of
those rows, and the gradients of the slice computation (anchor path plus column path)
must add up to the single-process gradient. Single process, no process group needed.
"""

from __future__ import annotations

import pytest
import torch

from nodulebench.losses import _dense

N, D = 13, 4
SLICES = [(0, N), (0, 5), (4, 9), (12, 13)]
PER_ANCHOR = {
    "supcon-out": (_dense.supcon_per_anchor, {"temperature": 0.2, "variant": "out"}),
    "supcon-in": (_dense.supcon_per_anchor, {"temperature": 0.2, "variant": "in"}),
    "contrastive": (_dense.contrastive_per_anchor, {"margin": 2.0}),
    "triplet-hard": (_dense.triplet_per_anchor,
                     {"margin": 0.3, "distance": "euclidean", "mining": "hard"}),
    "triplet-all-cosine": (_dense.triplet_per_anchor,
                           {"margin": 0.3, "distance": "cosine", "mining": "all"}),
    "triplet-semihard-sq": (_dense.triplet_per_anchor,
                            {"margin": 0.3, "distance": "squared_euclidean",
                             "mining": "semihard"}),
    "multi-similarity": (_dense.multi_similarity_per_anchor,
                         {"alpha": 2.0, "beta": 10.0, "base": 0.2, "epsilon": 0.1}),
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64))
    return z, torch.randint(0, 3, (N,), generator=gen)


@pytest.mark.parametrize(("start", "stop"), SLICES)
@pytest.mark.parametrize("name", sorted(PER_ANCHOR))
def test_dense_slice_against_columns_matches_whole_batch(name: str, start: int, stop: int):
    fn, options = PER_ANCHOR[name]
    z, labels = _inputs()
    weights = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
    whole = z.clone().requires_grad_(True)
    expected = fn(whole, labels, **options)
    (expected[0][start:stop] * weights[start:stop]).sum().backward()

    columns = z.clone().requires_grad_(True)
    anchors = columns[start:stop]  # the anchors are a slice of the columns, as under DDP
    got = fn(anchors, labels[start:stop], columns=columns, column_labels=labels,
             row_offset=start, **options)
    (got[0] * weights[start:stop]).sum().backward()
    for value, reference in zip(got, expected, strict=True):
        if reference is not None:
            torch.testing.assert_close(value, reference[start:stop], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(columns.grad, whole.grad, rtol=1e-10, atol=1e-12)


def test_columns_and_column_labels_come_together() -> None:
    z, labels = _inputs()
    with pytest.raises(ValueError, match="columns and column_labels must be given together"):
        _dense.supcon_per_anchor(z, labels, temperature=0.1, variant="out", columns=z)
