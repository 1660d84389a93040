"""The tiled kernels with a separate reference set, against the dense reference backend.

Anchors are the rows of ``z``, candidates the rows of ``ref_z`` (no self-pair): values,
valid masks, counts and the gradients to both tensors must match the reference backend
(the definition) within the tolerances the tiled backend declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _loss_cases import make_case
from nodulebench.kernels._dense import pack_pair_labels
from nodulebench.kernels.dispatch import BACKENDS, get_backend_info, run_per_anchor

TILED = get_backend_info("tiled")
TOL = TILED.tolerances

OPTIONS: dict[str, list[dict[str, Any]]] = {
    "supcon": [{"temperature": 0.3, "variant": "out"}, {"temperature": 0.3, "variant": "in"}],
    "cnc": [{"temperature": 0.3, "variant": "out"}, {"temperature": 0.3, "variant": "in"}],
    "contrastive": [{"margin": 1.2}],
    "triplet_hard": [
        {"margin": 0.3, "distance": d} for d in ("euclidean", "squared_euclidean", "cosine")
    ],
    "triplet_all": [
        {"margin": 0.3, "distance": d} for d in ("euclidean", "squared_euclidean", "cosine")
    ],
    "multi_similarity": [{"alpha": 2.0, "beta": 10.0, "base": 0.3, "epsilon": 0.4}],
}
CASES = [(loss, options) for loss, choices in OPTIONS.items() for options in choices]
CASE_IDS = [f"{loss}-{'-'.join(str(v) for v in options.values())}" for loss, options in CASES]
# (anchor rows, reference rows): N != M both ways, a single reference row, one anchor.
SHAPES = [(11, 7), (6, 17), (9, 1), (1, 8)]


def sets(
    n: int, m: int, dtype: torch.dtype, loss: str, seed: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors and a reference set with classes the other lacks.

    The anchors' first two rows have classes no reference row has (anchors without a
    positive), the reference's classes 3 and 4 no anchor has; the reference repeats a
    row under its label (tied distances).
    """
    z, labels = make_case(
        "random_with_singletons", dtype, rows=n, dim=5, classes=3, seed=seed, singletons=min(2, n)
    )
    ref_z, ref_labels = make_case(
        "random_with_singletons", dtype, rows=m, dim=5, classes=5, seed=seed + 1, singletons=0
    )
    if m >= 4:
        ref_z[3], ref_labels[3] = ref_z[1], ref_labels[1]
    if loss == "cnc":  # pair labels: a class and a first model's prediction
        labels = pack_pair_labels(labels, torch.arange(n) % 2)
        ref_labels = pack_pair_labels(ref_labels, torch.arange(m) // 2 % 2)
    return z, labels, ref_z, ref_labels


def per_anchor(
    backend: str,
    loss: str,
    z: torch.Tensor,
    labels: torch.Tensor,
    ref_z: torch.Tensor,
    ref_labels: torch.Tensor,
    options: dict[str, Any],
    block_size: int | None = None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
    """The backend's per-anchor tensors and the gradients of a weighted sum to both sets."""
    z = z.detach().clone().requires_grad_()
    ref_z = ref_z.detach().clone().requires_grad_()
    reference = (ref_z, ref_labels)
    if block_size is None:
        result = run_per_anchor(loss, z, labels, backend=backend, reference=reference, **options)
    else:
        result = BACKENDS[backend].kernel(loss)(
            z, labels, reference=reference, block_size=block_size, **options
        )
    weights = torch.linspace(0.5, 1.5, z.shape[0], dtype=z.dtype)
    grads = torch.autograd.grad((result[0] * weights).sum(), (z, ref_z), allow_unused=True)
    zero = [torch.zeros_like(t) for t in (z, ref_z)]
    grad_z, grad_ref = (g if g is not None else o for g, o in zip(grads, zero, strict=True))
    return tuple(t.detach() for t in result), (grad_z, grad_ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("loss", "options"), CASES, ids=CASE_IDS)
def test_values_and_both_gradients_match_the_reference_backend(
    loss: str, options: dict[str, Any], shape: tuple[int, int], dtype: torch.dtype
) -> None:
    z, labels, ref_z, ref_labels = sets(*shape, dtype, loss)
    expected, expected_grads = per_anchor(
        "reference", loss, z.double(), labels, ref_z.double(), ref_labels, options
    )
    rtol, atol = TOL[dtype]
    for block_size in (None, 1, 4):
        got, grads = per_anchor("tiled", loss, z, labels, ref_z, ref_labels, options, block_size)
        for value, reference in zip(got, expected, strict=True):
            if value.is_floating_point():
                assert value.dtype == dtype
                torch.testing.assert_close(value.double(), reference, rtol=rtol, atol=atol)
            else:
                assert torch.equal(value, reference)
        for grad, reference in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad.double(), reference, rtol=rtol, atol=atol)


@pytest.mark.parametrize(("loss", "options"), CASES, ids=CASE_IDS)
def test_the_cases_are_not_vacuous(loss: str, options: dict[str, Any]) -> None:
    # Some anchors lack a positive in the reference, others have one, and the
    # reference rows take a gradient.
    z, labels, ref_z, ref_labels = sets(11, 7, torch.float64, loss)
    result, (_, grad_ref) = per_anchor("tiled", loss, z, labels, ref_z, ref_labels, options)
    valid = result[-1]
    if loss != "contrastive":  # every anchor with a reference row is valid there
        assert not valid.all() and valid.any()
    assert grad_ref.abs().sum() > 0


@pytest.mark.parametrize(("loss", "options"), CASES, ids=CASE_IDS)
def test_gradcheck_float64_both_tensors(loss: str, options: dict[str, Any]) -> None:
    z, labels, ref_z, ref_labels = sets(5, 6, torch.float64, loss, seed=11)
    kernel: Callable[..., tuple[torch.Tensor, ...]] = TILED.kernel(loss)

    def fn(anchors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return kernel(anchors, labels, reference=(reference, ref_labels), block_size=2, **options)[
            0
        ]

    assert torch.autograd.gradcheck(
        fn, (z.clone().requires_grad_(), ref_z.clone().requires_grad_())
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    classes=st.integers(1, 4),
    block_size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    loss=st.sampled_from(sorted(OPTIONS)),
)
def test_property_tiled_equals_reference(
    n: int, m: int, classes: int, block_size: int, seed: int, loss: str
) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=1)
    ref_z = torch.nn.functional.normalize(
        torch.randn(m, 3, generator=gen, dtype=torch.float64), dim=1
    )
    labels = torch.randint(0, classes, (n,), generator=gen)
    ref_labels = torch.randint(0, classes, (m,), generator=gen)
    if loss == "cnc":
        labels = pack_pair_labels(labels, torch.randint(0, 2, (n,), generator=gen))
        ref_labels = pack_pair_labels(ref_labels, torch.randint(0, 2, (m,), generator=gen))
    options = OPTIONS[loss][0]
    expected, expected_grads = per_anchor("reference", loss, z, labels, ref_z, ref_labels, options)
    got, grads = per_anchor("tiled", loss, z, labels, ref_z, ref_labels, options, block_size)
    rtol, atol = TOL[torch.float64]
    for value, reference in zip((*got, *grads), (*expected, *expected_grads), strict=True):
        if value.is_floating_point():
            torch.testing.assert_close(value, reference, rtol=rtol, atol=atol)
        else:
            assert torch.equal(value, reference)


def test_a_reference_set_is_never_the_anchors_self_pairs() -> None:
    # The batch as its own reference set: each anchor meets itself as a positive, unlike
    # the batch against itself (same values as the reference backend, not the self case).
    z, labels = make_case("multi_view", torch.float64, rows=8, dim=4, classes=2, seed=5)
    within, _ = run_per_anchor("supcon", z, labels, backend="tiled", temperature=0.5)
    against, _ = run_per_anchor(
        "supcon", z, labels, backend="tiled", temperature=0.5, reference=(z, labels)
    )
    expected, _ = run_per_anchor(
        "supcon", z, labels, backend="reference", temperature=0.5, reference=(z, labels)
    )
    torch.testing.assert_close(against, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(within, against)


def test_bad_reference_sets_get_named_errors() -> None:
    z, labels = make_case("multi_view", torch.float64, rows=6, dim=4, classes=2, seed=1)
    supcon = TILED.kernel("supcon")
    with pytest.raises(ValueError, match=r"ref_z must match z's D = 4"):
        supcon(
            z,
            labels,
            reference=(torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)),
            temperature=0.1,
        )
    with pytest.raises(ValueError, match=r"ref_z must match .* dtype torch.float64"):
        supcon(
            z,
            labels,
            reference=(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64)),
            temperature=0.1,
        )
    with pytest.raises(ValueError, match=r"ref_labels must have one entry per row of ref_z"):
        supcon(z, labels, reference=(z[:3], labels[:2]), temperature=0.1)
    with pytest.raises(TypeError, match=r"ref_labels must have dtype torch.int64"):
        supcon(z, labels, reference=(z[:3], labels[:3].int()), temperature=0.1)
    with pytest.raises(ValueError, match=r"ref_z must hold at least one row"):
        supcon(z, labels, reference=(z[:0], labels[:0]), temperature=0.1)
    with pytest.raises(TypeError, match=r"reference must be a \(ref_z, ref_labels\) pair"):
        supcon(z, labels, reference=z, temperature=0.1)
    with pytest.raises(ValueError, match=r"row_range and reference are exclusive"):
        supcon(z, labels, reference=(z, labels), row_range=(0, 2), temperature=0.1)
