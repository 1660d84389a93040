"""Tiled contrastive and triplet kernels against dense references written here."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _loss_cases import KERNEL_CASES
from _loss_cases import make_case as shared_case
from nodulebench.kernels.dispatch import get_backend_info, run_per_anchor
from nodulebench.kernels.tiled import contrastive_tiled, triplet_all_tiled, triplet_hard_tiled

TOL = get_backend_info("tiled").tolerances
DISTANCES = ["euclidean", "squared_euclidean", "cosine"]


def dense_distance(z: torch.Tensor, distance: str) -> torch.Tensor:
    """The pinned distances as an N x N matrix."""
    if distance == "cosine":
        u = torch.nn.functional.normalize(z, dim=1)
        return 1.0 - u @ u.T
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp(min=0.0)
    return d2 if distance == "squared_euclidean" else d2.clamp(min=1e-12).sqrt()


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(labels.shape[0], dtype=torch.bool)
    same = labels[:, None] == labels[None, :]
    return same & ~eye, ~same


def dense_contrastive(z: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    d = dense_distance(z, "euclidean")
    pos, neg = pair_masks(labels)
    cost = torch.where(pos, 0.5 * d**2, 0.0) + torch.where(
        neg, 0.5 * (margin - d).clamp(min=0.0) ** 2, 0.0
    )
    return cost.sum(dim=1) / (z.shape[0] - 1)


def dense_triplet_hard(
    z: torch.Tensor, labels: torch.Tensor, margin: float, distance: str
) -> tuple[torch.Tensor, torch.Tensor]:
    d = dense_distance(z, distance)
    pos, neg = pair_masks(labels)
    # amax / amin share the gradient equally among tied pairs (the reference's tie rule).
    hardest_pos = d.masked_fill(~pos, float("-inf")).amax(dim=1)
    hardest_neg = d.masked_fill(~neg, float("inf")).amin(dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    return torch.where(valid, torch.relu(hardest_pos - hardest_neg + margin), 0.0), valid


def loop_triplet_all(
    z: torch.Tensor, labels: torch.Tensor, margin: float, distance: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The O(N^3) enumeration the kernel replaces: S_i and C_i over every (p, n)."""
    d = dense_distance(z, distance)
    n = z.shape[0]
    totals, counts = [], []
    for i in range(n):
        terms = [
            torch.relu(d[i, p] - d[i, q] + margin)
            for p, q in itertools.product(range(n), range(n))
            if p != i and labels[p] == labels[i] and labels[q] != labels[i]
        ]
        totals.append(torch.stack(terms).sum() if terms else d[i, i] * 0.0)
        counts.append(sum(int(t > 0) for t in terms))
    return torch.stack(totals), torch.tensor(counts)


def make_case(name: str, dtype: torch.dtype, rows: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    return shared_case(
        name, dtype, rows=rows, dim=5, classes=3, seed=11, views=2, singletons=1, normalize=False
    )


CASES = KERNEL_CASES


def cases_and_dtypes() -> list[tuple[str, torch.dtype]]:
    # Duplicates in float32 would sit on sqrt(rounding noise) ~ 3e-4 instead of the 1e-6
    # floor, which no tight tolerance can absorb: duplicates are checked in float64.
    return [
        (c, dt)
        for c in CASES
        for dt in (torch.float32, torch.float64)
        if not (c == "duplicates" and dt == torch.float32)
    ]


def weights_for(z: torch.Tensor) -> torch.Tensor:
    return torch.randn(z.shape[0], dtype=z.dtype, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("margin", [1.5, 0.0])
@pytest.mark.parametrize(("case", "dtype"), cases_and_dtypes())
def test_contrastive_matches_dense(case: str, dtype: torch.dtype, margin: float) -> None:
    z, labels = make_case(case, dtype)
    w = weights_for(z)
    z_ref = z.double().requires_grad_()
    expected = dense_contrastive(z_ref, labels, margin)
    (expected_grad,) = torch.autograd.grad((expected * w.double()).sum(), z_ref)
    rtol, atol = TOL[dtype]
    for block_size in (4, 7, 64):
        z_k = z.clone().requires_grad_()
        loss, valid = contrastive_tiled(z_k, labels, margin=margin, block_size=block_size)
        (grad,) = torch.autograd.grad((loss * w).sum(), z_k)
        assert valid.all()
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize(("case", "dtype"), cases_and_dtypes())
def test_triplet_hard_matches_dense(case: str, dtype: torch.dtype, distance: str) -> None:
    z, labels = make_case(case, dtype)
    w = weights_for(z)
    z_ref = z.double().requires_grad_()
    expected, expected_valid = dense_triplet_hard(z_ref, labels, 0.3, distance)
    (expected_grad,) = torch.autograd.grad((expected * w.double()).sum(), z_ref)
    rtol, atol = TOL[dtype]
    for block_size in (4, 64):
        z_k = z.clone().requires_grad_()
        loss, valid = triplet_hard_tiled(
            z_k, labels, margin=0.3, distance=distance, block_size=block_size
        )
        (grad,) = torch.autograd.grad((loss * w).sum(), z_k)
        assert torch.equal(valid, expected_valid)
        torch.testing.assert_close(loss.double(), expected.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize(("case", "dtype"), cases_and_dtypes())
def test_triplet_all_matches_enumeration(case: str, dtype: torch.dtype, distance: str) -> None:
    z, labels = make_case(case, dtype, rows=15)
    margin = 0.5 if distance == "cosine" else 1.0
    w = weights_for(z)
    z_ref = z.double().requires_grad_()
    expected, expected_count = loop_triplet_all(z_ref, labels, margin, distance)
    (expected_grad,) = torch.autograd.grad((expected * w.double()).sum(), z_ref)
    pos, neg = pair_masks(labels)
    expected_valid = pos.any(dim=1) & neg.any(dim=1)
    rtol, atol = TOL[dtype]
    for block_size in (4, 64):
        z_k = z.clone().requires_grad_()
        total, count, valid = triplet_all_tiled(
            z_k, labels, margin=margin, distance=distance, block_size=block_size
        )
        (grad,) = torch.autograd.grad((total * w).sum(), z_k)
        assert torch.equal(count, expected_count)
        assert torch.equal(valid, expected_valid)
        torch.testing.assert_close(total.double(), expected.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_triplet_hard_ties_share_the_gradient_as_the_reference(
    distance: str, block_size: int
) -> None:
    # Rows 1, 2 coincide (anchor 0's two farthest positives tie) and rows 4, 5 coincide
    # (its two closest negatives tie; row 3 is farther): each tied pair gets half.
    z = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [-1.0, 0.0, 0.0],
            [0.6, 0.0, 0.8],
            [0.6, 0.0, 0.8],
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    results = []
    for backend in ("reference", "tiled"):
        x = z.clone().requires_grad_()
        extra = {"block_size": block_size} if backend == "tiled" else {}
        loss, _ = run_per_anchor(
            "triplet_hard", x, labels, backend=backend, margin=5.0, distance=distance, **extra
        )
        (grad,) = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach(), grad))
    (ref, ref_grad), (got, grad) = results
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # Anchor 0 alone, planted: the gradient through its tied positives is split evenly.
    x = z.clone().requires_grad_()
    loss, _ = triplet_hard_tiled(x, labels, margin=5.0, distance=distance, block_size=block_size)
    (grad,) = torch.autograd.grad(loss[0], x)
    torch.testing.assert_close(grad[1], grad[2], rtol=0.0, atol=0.0)
    torch.testing.assert_close(grad[4], grad[5], rtol=0.0, atol=0.0)
    assert grad[1].abs().sum() > 0 and grad[4].abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "tiled"])
@pytest.mark.parametrize("mining", ["hard", "all"])
def test_triplet_exactly_at_the_margin_has_zero_gradient(backend: str, mining: str) -> None:
    # Anchor 0 at 0 has its positive at 1 and its negative at -1: d_ap - d_an + 0 = 0
    # exactly; every other triplet is inactive. relu's gradient at 0 is 0 on every backend.
    z = torch.tensor([[0.0], [1.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    out = run_per_anchor(
        f"triplet_{mining}",
        z,
        torch.tensor([0, 0, 1]),
        backend=backend,
        margin=0.0,
        distance="euclidean",
    )
    (grad,) = torch.autograd.grad(out[0].sum(), z)
    assert torch.equal(out[0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradcheck_float64(distance: str) -> None:
    z, labels = make_case("random_with_singletons", torch.float64, rows=10)
    z.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: contrastive_tiled(x, labels, margin=2.0, block_size=3)[0], (z,)
    )
    assert torch.autograd.gradcheck(
        lambda x: triplet_hard_tiled(x, labels, margin=1.0, distance=distance, block_size=3)[0],
        (z,),
    )
    assert torch.autograd.gradcheck(
        lambda x: triplet_all_tiled(x, labels, margin=1.0, distance=distance, block_size=3)[0],
        (z,),
    )


@pytest.mark.parametrize("column", [0, 1, 2])
def test_triplet_all_nan_distance_gives_nan_like_the_enumeration(column: int) -> None:
    # A NaN row as positive, negative or anchor: every anchor whose triplets it enters
    # gets a NaN sum (the sort and the binary search must not drop it).
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    z[column, 1] = float("nan")
    labels = torch.tensor([0, 0, 1, 1])
    expected, _ = loop_triplet_all(z, labels, 0.2, "euclidean")
    total, _, valid = triplet_all_tiled(z, labels, margin=0.2, block_size=3)
    assert valid.all()
    assert torch.equal(torch.isnan(total), torch.isnan(expected))
    assert torch.isnan(total).any()


def test_single_row_is_invalid_and_zero() -> None:
    z = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(1, dtype=torch.int64)
    loss, valid = contrastive_tiled(z, labels)
    loss.sum().backward()
    assert not valid.any() and torch.equal(loss, torch.zeros(1, dtype=torch.float64))
    total, count, valid = triplet_all_tiled(z, labels)
    assert not valid.any() and count.item() == 0 and total.item() == 0.0


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=20),
    num_classes=st.integers(min_value=1, max_value=5),
    margin=st.floats(min_value=0.0, max_value=3.0),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_triplet_all_counts_equal_enumeration(
    n: int, num_classes: int, margin: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    expected, expected_count = loop_triplet_all(z, labels, margin, "euclidean")
    total, count, _ = triplet_all_tiled(z, labels, margin=margin, block_size=3)
    assert torch.equal(count, expected_count)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)


def test_bad_options() -> None:
    z, labels = torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="margin"):
        contrastive_tiled(z, labels, margin=-1.0)
    with pytest.raises(ValueError, match="distance must be one of"):
        triplet_hard_tiled(z, labels, distance="manhattan")
    with pytest.raises(ValueError, match="margin"):
        triplet_all_tiled(z, labels, margin=float("nan"))
    with pytest.raises(ValueError, match="block_size"):
        triplet_all_tiled(z, labels, block_size=0)
