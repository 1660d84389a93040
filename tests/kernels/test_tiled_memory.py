"""What autograd keeps between forward and backward must grow like N, never like N^2."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from nodulebench.kernels._dense import pack_pair_labels
from nodulebench.kernels._reference import supcon_reference
from nodulebench.kernels.tiled import (
    clip_tiled,
    cnc_tiled,
    contrastive_tiled,
    multi_similarity_tiled,
    siglip_tiled,
    supcon_tiled,
    triplet_all_tiled,
    triplet_hard_tiled,
)

D = 8

KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "supcon_out": lambda z, y: supcon_tiled(z, y, temperature=0.1, block_size=32)[0],
    "supcon_in": lambda z, y: supcon_tiled(z, y, temperature=0.1, variant="in", block_size=32)[0],
    "contrastive": lambda z, y: contrastive_tiled(z, y, block_size=32)[0],
    "triplet_hard": lambda z, y: triplet_hard_tiled(z, y, block_size=32)[0],
    "triplet_all": lambda z, y: triplet_all_tiled(z, y, block_size=32)[0],
    "multi_similarity": lambda z, y: multi_similarity_tiled(z, y, block_size=32)[0],
    # Two towers: z and its reversed copy.
    "clip": lambda z, y: clip_tiled(z, z.flip(0), scale=torch.tensor(10.0), block_size=32)[0],
    "siglip": lambda z, y: siglip_tiled(
        z, z.flip(0), scale=torch.tensor(10.0), bias=torch.tensor(-10.0), block_size=32
    )[0],
    "cnc": lambda z, y: cnc_tiled(
        z, pack_pair_labels(y % 2, y // 2 % 2), temperature=0.1, block_size=32
    )[0],
}


def saved_bytes(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int) -> int:
    """Bytes of every distinct tensor autograd saves for backward during ``fn``."""
    gen = torch.Generator().manual_seed(n)
    z = torch.nn.functional.normalize(torch.randn(n, D, generator=gen), dim=1)
    z.requires_grad_()
    labels = torch.randint(0, 8, (n,), generator=gen)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(z, labels)
    out.sum().backward()
    return sum(seen.values())


def grows_linearly(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    small, large = saved_bytes(fn, 128), saved_bytes(fn, 512)
    # 4x the rows: linear storage grows ~4x, quadratic storage ~16x.
    return large <= 6 * small and large <= 32 * 512 * D


def against_reference(
    kernel: Callable[..., tuple[torch.Tensor, ...]], **options: object
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The first half of the rows as anchors, the second half as their reference set."""

    def run(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        half = z.shape[0] // 2
        return kernel(z[:half], y[:half], reference=(z[half:], y[half:]), block_size=32, **options)[
            0
        ]

    return run


REFERENCE_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "supcon_out": against_reference(supcon_tiled, temperature=0.1),
    "supcon_in": against_reference(supcon_tiled, temperature=0.1, variant="in"),
    "contrastive": against_reference(contrastive_tiled),
    "triplet_hard": against_reference(triplet_hard_tiled),
    "triplet_all": against_reference(triplet_all_tiled),
    "multi_similarity": against_reference(multi_similarity_tiled),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_saved_tensors_grow_linearly(name: str) -> None:
    assert grows_linearly(KERNELS[name])


@pytest.mark.parametrize("name", sorted(REFERENCE_KERNELS))
def test_saved_tensors_grow_linearly_with_a_reference_set(name: str) -> None:
    assert grows_linearly(REFERENCE_KERNELS[name])


def test_the_check_catches_a_dense_implementation() -> None:
    # The dense reference backend keeps its N x N similarity matrix for backward.
    assert not grows_linearly(lambda z, y: supcon_reference(z, y, temperature=0.1)[0])

    def dense_against_reference(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        half = z.shape[0] // 2
        return supcon_reference(
            z[:half], y[:half], temperature=0.1, reference=(z[half:], y[half:])
        )[0]

    assert not grows_linearly(dense_against_reference)
