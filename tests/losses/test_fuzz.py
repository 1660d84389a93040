"""Fuzz harness: every pairwise loss x backend x dtype on random shapes, labels and options.

Properties, for every loss registered as consuming embeddings (so a new loss is fuzzed as
soon as it is registered), the ``"reference"`` and ``"tiled"`` backends (Triton has its
own tests) and float32, float64 and bfloat16 inputs:

- finite inputs give a finite loss and a finite gradient;
- the tiled backend equals the reference within the tolerances it declares (declared for
  unit-scale inputs: the absolute tolerance grows with the largest pair term,
  :math:`\\max |z_i \\cdot z_j| / \\tau`, and for the gradient through L2 normalization with
  one over the smallest row norm);
- a NaN entry gives a NaN loss (``"mean"`` and ``"sum"``) on every backend.

float16 is left out on purpose: the losses compute in float32, but the gradient returned
to a float16 tensor overflows to ``inf`` wherever it exceeds 65504 (documented in the
losses guide).

The Hypothesis profile comes from ``NODULEBENCH_FUZZ_PROFILE``: ``"fuzz-ci"`` (default,
bounded for CI) or ``"fuzz-deep"`` (``nox -s fuzz``).
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodulebench import get_loss_info, list_losses
from nodulebench.kernels.dispatch import get_backend_info

PROFILE_ENV = "NODULEBENCH_FUZZ_PROFILE"
settings.register_profile(
    "fuzz-ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz-deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(os.environ.get(PROFILE_ENV, "fuzz-ci"))

PAIRWISE = [name for name in list_losses() if get_loss_info(name).consumes == "embeddings"]
BACKENDS = ("reference", "tiled")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}

# Values drawn for each option a loss accepts; options not listed keep their default.
OPTION_VALUES: dict[str, list[Any]] = {
    "temperature": [0.05, 0.1, 0.5, 1.0],
    "variant": ["out", "in"],
    "base_temperature": [None, 0.07],
    "normalize": [True, False],
    "margin": [0.0, 0.2, 1.0],
    "distance": ["euclidean", "squared_euclidean", "cosine"],
    "mining": ["hard", "all", "semihard"],
    "alpha": [1.0, 2.0],
    "beta": [10.0, 50.0],
    "base": [-0.5, 0.5, 1.0],
    "epsilon": [0.0, 0.1],
}


def takes_labels(name: str) -> bool:
    forward = inspect.signature(get_loss_info(name).factory.forward).parameters
    return "labels" in forward


@st.composite
def loss_cases(draw: st.DrawFn, name: str, reductions: tuple[str, ...]) -> dict[str, Any]:
    """Options, a float64 batch of some scale, and labels (or None) for loss ``name``."""
    info = get_loss_info(name)
    options = {
        key: draw(st.sampled_from(values))
        for key, values in OPTION_VALUES.items()
        if key in info.accepted_kwargs
    }
    options["reduction"] = draw(st.sampled_from(reductions))
    labelled = takes_labels(name) and (info.requires_labels or draw(st.booleans()))
    # Without labels the views are each other's positives: draw at least two.
    views = draw(st.sampled_from([None, 2, 3] if labelled else [2, 3]))
    batch, dim = draw(st.integers(1, 7)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 1e3]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, dim) if views is None else (batch, views, dim)
    embeddings = scale * torch.randn(shape, generator=gen, dtype=torch.float64)
    classes = draw(st.integers(1, 4))
    labels = torch.randint(0, classes, (batch,), generator=gen) if labelled else None
    return {"options": options, "embeddings": embeddings, "labels": labels}


def run(
    name: str, case: dict[str, Any], backend: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and the gradient of its sum with respect to the embeddings."""
    loss_fn = get_loss_info(name).factory(backend=backend, **case["options"])
    embeddings = case["embeddings"].to(dtype, copy=True).requires_grad_()
    args = (embeddings,) if case["labels"] is None else (embeddings, case["labels"])
    loss = loss_fn(*args)
    (grad,) = torch.autograd.grad(loss.sum(), embeddings)
    return loss.detach(), grad


def run_if_served(
    name: str, case: dict[str, Any], backend: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`run`, or None where ``backend`` cannot compute these options (it says why)."""
    try:
        return run(name, case, backend, dtype)
    except ValueError as error:
        if backend == "reference" or f"backend={backend!r} cannot compute" not in str(error):
            raise
        return None


def pair_scale(case: dict[str, Any]) -> float:
    """The largest pair term, max |z_i . z_j| (over tau), at least 1: the loss's scale."""
    rows = case["embeddings"].reshape(-1, case["embeddings"].shape[-1])
    if case["options"].get("normalize", False):
        rows = torch.nn.functional.normalize(rows, dim=1)
    scale = max(1.0, float((rows @ rows.T).abs().max()))
    return scale / min(1.0, case["options"].get("temperature", 1.0))


def normalize_gain(case: dict[str, Any]) -> float:
    """How much L2 normalization scales a gradient on the way back: 1 / the smallest norm.

    The cosine distance normalizes the rows itself, whatever ``normalize`` says.
    """
    options = case["options"]
    if not (options.get("normalize", False) or options.get("distance") == "cosine"):
        return 1.0
    norms = case["embeddings"].reshape(-1, case["embeddings"].shape[-1]).norm(dim=1)
    return 1.0 / min(1.0, float(norms.min()))


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("name", PAIRWISE)
@FUZZ
@given(data=st.data())
def test_finite_inputs_give_finite_values_equal_across_backends(
    name: str, dtype_name: str, data: st.DataObject
) -> None:
    dtype = DTYPES[dtype_name]
    case = data.draw(loss_cases(name, ("mean", "sum", "none")))
    results = {}
    for backend in BACKENDS:
        result = run_if_served(name, case, backend, dtype)
        if result is None:
            continue
        loss, grad = result
        assert torch.isfinite(loss).all(), (backend, loss)
        assert torch.isfinite(grad).all(), (backend, grad)
        results[backend] = (loss, grad)
    if "tiled" not in results:
        return
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rtol, atol = get_backend_info("tiled").tolerances[compute_dtype]
    atol *= pair_scale(case) * (
        case["embeddings"].shape[0] if case["options"]["reduction"] == "sum" else 1
    )
    (ref_loss, ref_grad), (loss, grad) = results["reference"], results["tiled"]
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    # A bfloat16 gradient is rounded once more: one unit in its last place (2**-7).
    grad_rtol = max(rtol, 2.0**-7) if dtype == torch.bfloat16 else rtol
    torch.testing.assert_close(
        grad.double(), ref_grad.double(), rtol=grad_rtol, atol=atol * normalize_gain(case)
    )


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("name", PAIRWISE)
@FUZZ
@given(data=st.data())
def test_nan_input_gives_nan_loss_on_every_backend(
    name: str, dtype_name: str, data: st.DataObject
) -> None:
    dtype = DTYPES[dtype_name]
    case = data.draw(loss_cases(name, ("mean", "sum")))
    embeddings = case["embeddings"].clone()
    flat = embeddings.view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = math.nan
    case["embeddings"] = embeddings
    for backend in BACKENDS:
        result = run_if_served(name, case, backend, dtype)
        if result is not None:
            assert torch.isnan(result[0]), (backend, result[0])


def test_float16_gradient_beyond_its_range_is_inf_with_a_warning() -> None:
    # The loss is computed in float32 (finite), but the gradient of 1.2e5 per entry is
    # cast to the float16 input, whose largest finite value is 65504: a warning says so.
    embeddings = torch.tensor([[3.0e4], [-3.0e4]], dtype=torch.float16, requires_grad=True)
    loss_fn = get_loss_info("contrastive").factory(reduction="sum")
    loss = loss_fn(embeddings, torch.tensor([0, 0]))
    with pytest.warns(RuntimeWarning, match=r"float16 embeddings overflowed to inf in 2 of 2"):
        (grad,) = torch.autograd.grad(loss, embeddings)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isinf(grad).all()


def test_float16_gradient_overflow_at_small_scale_warns() -> None:
    # Tiny inputs, a low temperature, normalize=True: the true gradient reaches about
    # 1e6 (1 / |z| through the normalization times 1 / tau), beyond float16's range.
    gen = torch.Generator().manual_seed(0)
    embeddings = (1.5e-5 * torch.randn(16, 2, 8, generator=gen)).half().requires_grad_()
    loss_fn = get_loss_info("supcon").factory(temperature=0.01, reduction="sum")
    loss = loss_fn(embeddings, torch.arange(16) % 2)
    exact = embeddings.detach().float().requires_grad_()
    (true_grad,) = torch.autograd.grad(loss_fn(exact, torch.arange(16) % 2), exact)
    assert float(true_grad.abs().max()) > 65504
    with pytest.warns(RuntimeWarning, match="overflowed to inf"):
        (grad,) = torch.autograd.grad(loss, embeddings)
    assert int(torch.isinf(grad).sum()) == int((true_grad.abs() > 65504).sum())


def test_float16_gradient_within_range_does_not_warn() -> None:
    embeddings = torch.randn(6, 2, 4, dtype=torch.float16, requires_grad=True)
    loss = get_loss_info("supcon").factory()(embeddings, torch.arange(6) % 2)
    (grad,) = torch.autograd.grad(loss, embeddings)  # filterwarnings=error: no warning
    assert torch.isfinite(grad).all()
