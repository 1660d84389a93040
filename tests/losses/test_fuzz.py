"""Fuzz harness: every registry loss x backend x dtype on random shapes, labels and options.

Properties, for every registered loss (so a new loss is fuzzed as soon as it is
registered: pairwise, Correct-N-Contrast, the two-tower losses and the losses on
logits), on the ``"reference"`` and ``"tiled"`` backends where the loss has a backend
option (Triton has its own tests), and on float64, float32, bfloat16 and float16 inputs
at scales from 1e-6 to 1e4:

- finite inputs give a finite loss, and a finite gradient, except that a float16
  gradient may overflow to ``inf`` beyond 65504, and then a ``RuntimeWarning`` says so
  (the losses compute in float32; the gradient is cast back to the float16 input);
- the tiled backend equals the reference within the tolerances it declares (declared for
  unit-scale inputs: the absolute tolerance grows with the largest pair term,
  :math:`\\max |z_i \\cdot z_j| / \\tau`, and for the gradient through L2 normalization with
  one over the smallest row norm);
- a NaN entry gives a NaN loss (``"mean"`` and ``"sum"``) on every backend.

Cases that once failed are kept below as explicit regressions (``REGRESSIONS``).

The Hypothesis profile comes from ``NODULEBENCH_FUZZ_PROFILE``: ``"fuzz-ci"`` (default,
bounded for CI: seeded, derandomized, a fixed number of examples) or ``"fuzz-deep"``
(``nox -s fuzz``).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
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
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz-deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings.get_profile(os.environ.get(PROFILE_ENV, "fuzz-ci"))

LOSSES = list_losses()
BACKENDS = ("reference", "tiled")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
SCALES = [1e-6, 1e-3, 1.0, 10.0, 1e3, 1e4]

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
    "label_smoothing": [0.0, 0.1],
    "step_size": [0.01, 1.0],
}
# Log-sum-exp losses whose tiled value is exactly 0 wherever the dense one is.
EXACT_ZEROS = ("supcon", "ntxent", "cnc", "clip")
# Reductions each loss offers (GroupDRO's objective has no "sum").
REDUCTIONS = {"group_dro": ("mean", "none")}


def takes_labels(name: str) -> bool:
    forward = inspect.signature(get_loss_info(name).factory.forward).parameters
    return "labels" in forward


def has_backends(name: str) -> bool:
    return "backend" in get_loss_info(name).accepted_kwargs


@st.composite
def loss_cases(draw: st.DrawFn, name: str, reductions: tuple[str, ...]) -> dict[str, Any]:
    """Options and float64 inputs of some scale for loss ``name`` (``inputs``: a tuple)."""
    info = get_loss_info(name)
    options = {
        key: draw(st.sampled_from(values))
        for key, values in OPTION_VALUES.items()
        if key in info.accepted_kwargs
    }
    allowed = tuple(r for r in reductions if r in REDUCTIONS.get(name, reductions))
    options["reduction"] = draw(st.sampled_from(allowed))
    batch, dim = draw(st.integers(1, 7)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from(SCALES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    classes = draw(st.integers(1, 4))

    def ints(high: int) -> torch.Tensor:
        return torch.randint(0, high, (batch,), generator=gen)

    def floats(*shape: int) -> torch.Tensor:
        return scale * torch.randn(shape, generator=gen, dtype=torch.float64)

    if info.consumes == "paired_embeddings":
        inputs: tuple[torch.Tensor, ...] = (floats(batch, dim), floats(batch, dim))
    elif info.consumes == "logits":
        inputs = (floats(batch, classes), ints(classes))
    elif info.consumes == "logits_and_groups":
        options["num_groups"] = groups = draw(st.integers(1, 4))
        inputs = (floats(batch, classes), ints(classes), ints(groups))
    else:
        labelled = takes_labels(name) and (info.requires_labels or draw(st.booleans()))
        # Without labels the views are each other's positives: draw at least two.
        views = draw(st.sampled_from([None, 2, 3] if labelled else [2, 3]))
        z = floats(batch, dim) if views is None else floats(batch, views, dim)
        inputs = (z,) if not labelled else (z, ints(classes))
        if info.consumes == "embeddings_and_predictions":
            inputs = (*inputs, ints(classes))
    return {"options": options, "inputs": inputs}


def run(
    name: str, case: dict[str, Any], backend: str | None, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Tensor], bool]:
    """The loss, the gradients of its sum w.r.t. the float inputs, and whether a
    float16 overflow warning was emitted."""
    options = dict(case["options"])
    if backend is not None:
        options["backend"] = backend
    loss_fn = get_loss_info(name).factory(**options)
    inputs = [
        x.to(dtype, copy=True).requires_grad_() if x.is_floating_point() else x
        for x in case["inputs"]
    ]
    loss = loss_fn(*inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = torch.autograd.grad(loss.sum(), [x for x in inputs if x.is_floating_point()])
    overflow = False
    for warning in caught:
        if "overflowed to inf" in str(warning.message):
            overflow = True
        else:  # any other warning stays an error
            warnings.warn(warning.message, stacklevel=2)
    return loss.detach(), list(grads), overflow


def run_if_served(
    name: str, case: dict[str, Any], backend: str, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Tensor], bool] | None:
    """:func:`run`, or None where ``backend`` cannot compute these options (it says why)."""
    try:
        return run(name, case, backend if has_backends(name) else None, dtype)
    except ValueError as error:
        if backend == "reference" or f"backend={backend!r} cannot compute" not in str(error):
            raise
        return None


def rows_of(case: dict[str, Any]) -> torch.Tensor:
    floats = [x for x in case["inputs"] if x.is_floating_point()]
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in floats])


def pair_scale(case: dict[str, Any]) -> float:
    """The largest pair term, max |z_i . z_j| (over tau), at least 1: the loss's scale."""
    rows = rows_of(case)
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
    norms = rows_of(case).norm(dim=1)
    return 1.0 / min(1.0, float(norms.min()))


def check_case(name: str, case: dict[str, Any], dtype: torch.dtype) -> None:
    """The fuzz properties for one case: finite values, backends agree."""
    results = {}
    for backend in BACKENDS if has_backends(name) else ("reference",):
        result = run_if_served(name, case, backend, dtype)
        if result is None:
            continue
        loss, grads, overflow = result
        assert torch.isfinite(loss).all(), (backend, loss)
        for grad in grads:
            # Only a float16 gradient may overflow, and never silently.
            finite = bool(torch.isfinite(grad).all())
            assert finite or (dtype == torch.float16 and overflow), (backend, grad)
        results[backend] = (loss, grads)
    if "tiled" not in results:
        return
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rtol, atol = get_backend_info("tiled").tolerances[compute_dtype]
    atol *= pair_scale(case) * (
        case["inputs"][0].shape[0] if case["options"]["reduction"] == "sum" else 1
    )
    (ref_loss, ref_grads), (loss, grads) = results["reference"], results["tiled"]
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    # The tiled engine shifts every log-sum-exp by its row maximum: never negative, and
    # exactly 0 where the exact loss is (one candidate, the positive itself). "Exact":
    # the dense loss in float64 of the same (rounded) inputs; the dense float32 loss
    # itself loses small terms next to logits of 1e9.
    assert (loss >= 0).all(), loss
    if name in EXACT_ZEROS:
        rounded = {
            **case,
            "inputs": tuple(
                x.to(dtype).double() if x.is_floating_point() else x for x in case["inputs"]
            ),
        }
        exact = run(name, rounded, "reference", torch.float64)[0]
        zero = exact == 0
        assert torch.equal(loss[zero].double(), exact[zero]), (loss, exact)
    # A low-precision gradient is rounded once more: one unit in its last place.
    last_place = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
    grad_rtol = max(rtol, last_place.get(dtype, 0.0))
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        both = torch.isfinite(grad) & torch.isfinite(ref_grad)
        torch.testing.assert_close(
            grad.double()[both],
            ref_grad.double()[both],
            rtol=grad_rtol,
            atol=atol * normalize_gain(case),
        )


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("name", LOSSES)
@FUZZ
@given(data=st.data())
def test_finite_inputs_give_finite_values_equal_across_backends(
    name: str, dtype_name: str, data: st.DataObject
) -> None:
    check_case(name, data.draw(loss_cases(name, ("mean", "sum", "none"))), DTYPES[dtype_name])


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("name", LOSSES)
@FUZZ
@given(data=st.data())
def test_nan_input_gives_nan_loss_on_every_backend(
    name: str, dtype_name: str, data: st.DataObject
) -> None:
    dtype = DTYPES[dtype_name]
    case = data.draw(loss_cases(name, ("mean", "sum")))
    first = case["inputs"][0].clone()
    flat = first.view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = math.nan
    case["inputs"] = (first, *case["inputs"][1:])
    for backend in BACKENDS if has_backends(name) else ("reference",):
        result = run_if_served(name, case, backend, dtype)
        if result is not None:
            assert torch.isnan(result[0]), (backend, result[0])


def regression(
    case_id: str, name: str, inputs: tuple[Any, ...], dtype: str = "float32", **options: Any
) -> Any:
    """A case that once failed, as :func:`check_case` takes it (float lists as float64)."""
    tensors = tuple(torch.tensor(x) for x in inputs)
    case = {
        "options": {"reduction": "mean", **options},
        "inputs": tuple(t.double() if t.is_floating_point() else t for t in tensors),
    }
    return pytest.param(name, case, DTYPES[dtype], id=case_id)


REGRESSIONS = [
    # Tiled CLIP, one pair at |logit| ~ 1e9: 128.0 instead of 0.0 (tiled engine v1).
    regression(
        "clip-one-pair",
        "clip",
        ([[3.0e4, -2.0e4]], [[2.9e4, -2.1e4]]),
        normalize=False,
        reduction="sum",
    ),
    # Tiled CLIP, two duplicated pairs at |logit| ~ 1e9 (float32, temperature 0.07):
    # 256.0 for a pair whose exact loss is 0.0.
    regression(
        "clip-two-pairs-exact-zero",
        "clip",
        (
            [
                [4715.0048828125, -8752.3564453125, 19629.974609375],
                [14342.455078125, 6407.69580078125, 6854.26904296875],
            ],
        )
        * 2,
        normalize=False,
        reduction="none",
    ),
    # Tiled CLIP, three pairs at large scale: log 3 instead of 0.
    regression(
        "clip-three-pairs",
        "clip",
        ([[1e4, 0.0], [0.0, 1e4], [-1e4, 0.0]], [[1e4, 0.0], [0.0, 1e4], [-1e4, 0.0]]),
        normalize=False,
        temperature=0.1,
    ),
    # float16 at input scale 1.5e-5, temperature 0.01: the gradient overflows (warned).
    regression(
        "ntxent-float16-overflow",
        "ntxent",
        ([[[1.5e-5, -1.0e-5], [-1.4e-5, 1.2e-5]], [[-1.5e-5, 0.5e-5], [1.3e-5, 0.7e-5]]],),
        dtype="float16",
        temperature=0.01,
        reduction="sum",
    ),
    # Correct-N-Contrast at large unnormalized scale (4.1e4 apart before the fix).
    regression(
        "cnc-large-scale",
        "cnc",
        ([[3e3, 1e3], [2e3, -1e3], [-3e3, 2e3], [1e3, 1e3]], [0, 0, 1, 1], [0, 1, 1, 0]),
        normalize=False,
        reduction="sum",
    ),
    # Cross-entropy and GroupDRO at extreme logits.
    regression(
        "cross-entropy-extreme",
        "cross_entropy",
        ([[1e4, -1e4], [-1e4, 1e4]], [0, 0]),
        reduction="sum",
    ),
    regression(
        "group-dro-extreme", "group_dro", ([[1e4, -1e4], [-1e4, 1e4]], [0, 1], [0, 1]), num_groups=2
    ),
]


@pytest.mark.parametrize(("name", "case", "dtype"), REGRESSIONS)
def test_regressions(name: str, case: dict[str, Any], dtype: torch.dtype) -> None:
    check_case(name, case, dtype)


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
