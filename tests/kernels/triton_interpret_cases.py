"""Triton SupCon kernels on the CPU interpreter, against a float64 per-anchor reference.

Not collected by the main run (no ``test_`` prefix): ``test_triton_supcon.py`` runs this
file in a subprocess with ``TRITON_INTERPRET=1`` set before Triton is imported, which is
the only way the interpreter can be selected.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "run through test_triton_supcon.py (needs TRITON_INTERPRET=1)", allow_module_level=True
    )

from _loss_cases import ref_supcon  # noqa: E402
from nodulebench.kernels._reference import supcon_reference  # noqa: E402
from nodulebench.kernels._triton_utils import TRITON_SUPCON_CAPABILITIES  # noqa: E402
from nodulebench.kernels.triton_supcon import KernelConfig, supcon_triton  # noqa: E402

LOW_PRECISION = (torch.bfloat16, torch.float16)
# Small tiles so that N <= 70 spans several row and column blocks with ragged edges.
SMALL_TILES = KernelConfig(
    fwd_block_rows=16,
    fwd_block_cols=32,
    bwd_block_rows=32,
    bwd_block_cols=16,
    fwd_num_warps=1,
    bwd_num_warps=1,
    fwd_num_stages=1,
    bwd_num_stages=1,
)


def unit_rows(n: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64))
    return z.to(dtype)


def check_against_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str,
    config: KernelConfig | None = None,
) -> None:
    if z.dtype == torch.float32:  # the interpreter computes float32 dots exactly
        loss_atol, loss_rtol, grad_rel = 1e-5, 1e-5, 1e-5
    else:
        tol = TRITON_SUPCON_CAPABILITIES.tolerances[z.dtype]
        loss_atol, loss_rtol, grad_rel = tol.loss_atol, tol.loss_rtol, tol.grad_rel
    weights = torch.rand(z.shape[0], generator=torch.Generator().manual_seed(7)) + 0.5

    z_kernel = z.clone().requires_grad_(True)
    loss, valid = supcon_triton(
        z_kernel, labels, temperature=temperature, variant=variant, config=config
    )
    (loss * weights).sum().backward()

    # Values from the suite's loop reference; gradients from the dense reference backend.
    z_ref = z.to(torch.float64).requires_grad_(True)
    loss_ref = ref_supcon(
        z_ref.detach(),
        labels,
        temperature=temperature,
        variant=variant,
        normalize=False,
        reduction="none",
    )
    dense, _ = supcon_reference(
        z_ref, labels.to(torch.int64), temperature=temperature, variant=variant
    )
    (dense * weights.to(torch.float64)).sum().backward()

    expected_valid = torch.tensor(
        [bool(((labels == labels[i]).sum() > 1).item()) for i in range(labels.shape[0])]
    )
    assert loss.dtype == torch.float32 and loss.shape == (z.shape[0],)
    assert valid.dtype == torch.bool and torch.equal(valid, expected_valid)
    assert torch.all(loss[~valid] == 0.0)
    torch.testing.assert_close(loss.to(torch.float64), loss_ref, atol=loss_atol, rtol=loss_rtol)
    assert z_kernel.grad is not None and z_kernel.grad.dtype == z.dtype
    assert torch.isfinite(z_kernel.grad).all()
    grad_ref = z_ref.grad
    assert grad_ref is not None
    error = (z_kernel.grad.to(torch.float64) - grad_ref).abs().max()
    scale = grad_ref.abs().max().clamp_min(1e-30)
    assert error <= grad_rel * scale, f"grad error {error:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("config", [None, SMALL_TILES], ids=["default-tiles", "small-tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_ragged_batch_with_anchors_without_positives(
    variant: str, dtype: torch.dtype, config: KernelConfig | None
) -> None:
    z = unit_rows(67, 24, seed=1, dtype=dtype)
    labels = torch.randint(0, 8, (67,), generator=torch.Generator().manual_seed(2))
    labels[[3, 40]] = torch.tensor([100, 101])  # two anchors with no positive
    check_against_reference(z, labels, temperature=0.1, variant=variant, config=config)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_multiview_labels(variant: str) -> None:
    batch, views = 23, 3
    sample_labels = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(3))
    labels = sample_labels.repeat_interleave(views)  # row b*V + v has label y_b
    z = unit_rows(batch * views, 32, seed=4, dtype=torch.float32)
    check_against_reference(z, labels, temperature=0.07, variant=variant, config=SMALL_TILES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ntxent_labels_are_sample_indices(dtype: torch.dtype) -> None:
    batch, views = 35, 2
    labels = torch.arange(batch).repeat_interleave(views)
    z = unit_rows(batch * views, 16, seed=5, dtype=dtype)
    check_against_reference(z, labels, temperature=0.5, variant="out", config=SMALL_TILES)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_duplicate_embeddings(variant: str) -> None:
    z = unit_rows(20, 16, seed=6, dtype=torch.float32)
    z = torch.cat([z, z, z[:9]])  # exact duplicates, same and different labels
    labels = torch.randint(0, 4, (49,), generator=torch.Generator().manual_seed(8))
    check_against_reference(z, labels, temperature=0.1, variant=variant, config=SMALL_TILES)


@pytest.mark.parametrize("n_rows", [1, 5])
def test_no_valid_anchor_gives_zero_loss_and_zero_gradient(n_rows: int) -> None:
    z = unit_rows(n_rows, 16, seed=9, dtype=torch.float32).requires_grad_(True)
    loss, valid = supcon_triton(z, torch.arange(n_rows), temperature=0.1)
    assert not valid.any() and torch.all(loss == 0.0)
    loss.sum().backward()
    assert z.grad is not None and torch.all(z.grad == 0.0)


def test_small_temperature_stays_finite_and_exact() -> None:
    z = unit_rows(40, 16, seed=10, dtype=torch.float32)
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(11))
    check_against_reference(z, labels, temperature=0.01, variant="in", config=SMALL_TILES)


def test_results_are_bitwise_reproducible() -> None:
    z = unit_rows(50, 32, seed=12, dtype=torch.bfloat16)
    labels = torch.randint(0, 6, (50,), generator=torch.Generator().manual_seed(13))
    runs = []
    for _ in range(2):
        zz = z.clone().requires_grad_(True)
        loss, _ = supcon_triton(zz, labels, temperature=0.1, config=SMALL_TILES)
        loss.sum().backward()
        runs.append((loss.detach(), zz.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_non_contiguous_input_and_int32_labels() -> None:
    z = unit_rows(30, 32, seed=14, dtype=torch.float32)
    z_strided = z.T.contiguous().T  # same values, column-major strides
    labels = torch.randint(0, 5, (30,), generator=torch.Generator().manual_seed(15))
    assert not z_strided.is_contiguous()
    check_against_reference(z_strided, labels.to(torch.int32), temperature=0.2, variant="out")


def test_valid_mask_is_not_differentiable_and_double_backward_refuses() -> None:
    z = unit_rows(12, 16, seed=16, dtype=torch.float32).requires_grad_(True)
    loss, valid = supcon_triton(z, torch.arange(12) % 3, temperature=0.1)
    assert not valid.requires_grad
    weights = torch.ones(12, requires_grad=True)  # makes the upstream gradient need a graph
    (grad,) = torch.autograd.grad((loss * weights).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


@settings(max_examples=20, deadline=None)
@given(
    n_rows=st.integers(2, 70),
    dim=st.integers(1, 40),
    n_classes=st.integers(1, 12),
    variant=st.sampled_from(["out", "in"]),
    temperature=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(
    n_rows: int, dim: int, n_classes: int, variant: str, temperature: float, seed: int
) -> None:
    z = unit_rows(n_rows, dim, seed=seed, dtype=torch.float32)
    labels = torch.randint(
        0, n_classes, (n_rows,), generator=torch.Generator().manual_seed(seed + 1)
    )
    check_against_reference(z, labels, temperature=temperature, variant=variant, config=SMALL_TILES)


def test_labels_that_alias_in_int32_stay_distinct() -> None:
    z = unit_rows(30, 16, seed=17, dtype=torch.float32)
    big = 2**40
    labels = torch.tensor([big, big + 2**32, -3] * 10)  # equal modulo 2**32 for the first two
    check_against_reference(z, labels, temperature=0.1, variant="out", config=SMALL_TILES)


# Dynamo itself reads .grad of non-leaf tensors while tracing the step; not our warning.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_works_inside_a_compiled_step_with_a_graph_break() -> None:
    def step(raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(raw, dim=1)
        loss, valid = supcon_triton(z, labels, temperature=0.1)
        return loss.sum() / valid.sum().clamp_min(1)

    raw = torch.randn(40, 16, generator=torch.Generator().manual_seed(18), requires_grad=True)
    labels = torch.arange(40) % 7
    (grad_eager,) = torch.autograd.grad(step(raw, labels), raw)
    compiled = torch.compile(step, backend="eager", fullgraph=False)
    loss = compiled(raw, labels)
    (grad_compiled,) = torch.autograd.grad(loss, raw)
    torch.testing.assert_close(loss, step(raw, labels).detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=0, atol=0)


def test_learnable_temperature_reaches_the_kernel() -> None:
    from nodulebench.losses.functional import supcon_loss

    embeddings = torch.randn(12, 2, 16, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(12) % 4
    results = []
    for backend in ("triton", "reference"):
        tau = torch.tensor(0.2, requires_grad=True)
        loss = supcon_loss(embeddings, labels, temperature=tau, backend=backend)
        loss.backward()
        assert tau.grad is not None
        results.append((loss.detach(), tau.grad))
    (loss, grad), (want, want_grad) = results
    tol = TRITON_SUPCON_CAPABILITIES.tolerances[torch.float32]
    assert abs(loss - want) <= tol.loss_atol + tol.loss_rtol * abs(want)
    assert abs(grad - want_grad) <= tol.grad_rel * abs(want_grad)
