"""Semi-hard triplet mining: the sort-based reference against the O(N^3) enumeration."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from nodulebench.kernels.dispatch import run_per_anchor
from nodulebench.losses.distances import pairwise_distance

DISTANCES = ["euclidean", "squared_euclidean", "cosine"]


def cubic_semihard(
    z: torch.Tensor, labels: torch.Tensor, margin: float, distance: str
) -> torch.Tensor:
    """Per-anchor semi-hard loss with the (N, N, N) tensor of every (anchor, p, n)."""
    n = z.shape[0]
    d = pairwise_distance(z, distance)
    eye = torch.eye(n, dtype=torch.bool)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    d_pos = d[:, :, None]
    d_neg = d[:, None, :].expand(n, n, n)
    farther = pos[:, :, None] & neg[:, None, :] & (d_neg > d_pos)
    closest_farther = torch.where(farther, d_neg, math.inf).amin(dim=2)
    farthest = torch.where(neg, d, -math.inf).amax(dim=1)[:, None].expand(n, n)
    chosen = torch.where(farther.any(dim=2), closest_farther, farthest)
    chosen = torch.where(pos & valid[:, None], chosen, 0.0)
    pair = torch.where(pos, torch.relu(d - chosen + margin), 0.0)
    loss = pair.sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    return torch.where(valid, loss, 0.0)


def case(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (17,), generator=gen)
    labels[0] = 9  # an anchor without positives
    z = torch.randn(17, 4, generator=gen, dtype=torch.float64)
    if name == "ties":
        # Duplicated negatives tie for the chosen negative; duplicated positives too.
        z[5], z[6] = z[4], z[4]
        labels[5], labels[6] = labels[4], labels[4] + 1
        z[9] = z[8]
        labels[9] = labels[8]
    return z, labels


@pytest.mark.parametrize("name", ["random", "ties"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.0, 0.3, 5.0])
def test_matches_the_cubic_enumeration(name: str, distance: str, margin: float) -> None:
    z, labels = case(name)
    w = torch.randn(z.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z_ref = z.clone().requires_grad_()
    expected = cubic_semihard(z_ref, labels, margin, distance)
    (expected_grad,) = torch.autograd.grad((expected * w).sum(), z_ref)
    z_got = z.clone().requires_grad_()
    loss, _ = run_per_anchor(
        "triplet_semihard", z_got, labels, backend="reference", margin=margin, distance=distance
    )
    (grad,) = torch.autograd.grad((loss * w).sum(), z_got)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_float64() -> None:
    z, labels = case("random")
    z = z[:10].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: run_per_anchor(
            "triplet_semihard",
            x,
            labels[:10],
            backend="reference",
            margin=0.5,
            distance="euclidean",
        )[0],
        (z,),
    )


def test_nan_row_gives_nan() -> None:
    z, labels = case("random")
    z[3, 1] = math.nan
    loss, valid = run_per_anchor(
        "triplet_semihard", z, labels, backend="reference", margin=0.2, distance="euclidean"
    )
    assert torch.isnan(loss[valid]).any()


def saved_bytes(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int) -> int:
    """Bytes of every distinct tensor autograd saves for backward during ``fn``."""
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(n, 4, generator=gen).requires_grad_()
    labels = torch.randint(0, 4, (n,), generator=gen)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(z, labels)
    out.sum().backward()
    return sum(seen.values())


def grows_at_most_quadratically(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    # 4x the rows: quadratic storage grows ~16x, cubic ~64x.
    return saved_bytes(fn, 128) <= 24 * saved_bytes(fn, 32)


def test_memory_grows_like_n_squared_not_n_cubed() -> None:
    def semihard(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return run_per_anchor(
            "triplet_semihard", z, labels, backend="reference", margin=0.2, distance="euclidean"
        )[0]

    def cubic(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cubic_semihard(z, labels, 0.2, "euclidean")

    assert grows_at_most_quadratically(semihard)
    assert not grows_at_most_quadratically(cubic)
