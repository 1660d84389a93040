"""CLIP InfoNCE and SigLIP: functional forms, modules, learnable scales, properties, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nodulebench
from nodulebench import ClipLoss, SigLipLoss, create_loss, get_loss_info
from nodulebench.losses.functional import clip_loss, siglip_loss

BACKENDS = ("reference", "tiled")
PROPERTY_SETTINGS = settings(max_examples=20, deadline=None)


def pairs(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, dim, generator=gen, dtype=torch.float64),
        torch.randn(batch, dim, generator=gen, dtype=torch.float64),
    )


def clip_by_formula(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean of the two cross-entropies, written with an explicit loop over pairs."""
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    total = x.new_zeros(())
    for i in range(len(x)):
        row = torch.stack([scale * (x[i] * y[j]).sum() for j in range(len(y))])
        col = torch.stack([scale * (x[k] * y[i]).sum() for k in range(len(x))])
        total = total + 0.5 * (-torch.log_softmax(row, 0)[i] - torch.log_softmax(col, 0)[i])
    return total / len(x)


def siglip_by_formula(
    x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    total = x.new_zeros(())
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if i == j else -1.0
            total = total + torch.log1p(torch.exp(-z * (t.exp() * (x[i] * y[j]).sum() + b)))
    return total / len(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_value_and_gradients_equal_the_formula(backend: str) -> None:
    x, y = pairs(5, 4, seed=0)
    results = []
    for fn in (
        lambda a, b, t: clip_loss(a, b, logit_scale=t, backend=backend),
        lambda a, b, t: clip_by_formula(a, b, t.exp()),
    ):
        leaves = [
            x.clone().requires_grad_(),
            y.clone().requires_grad_(),
            torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True),
        ]
        loss = fn(*leaves)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert grads[2].abs() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_siglip_value_and_gradients_equal_the_formula(backend: str) -> None:
    x, y = pairs(5, 4, seed=1)
    results = []
    for fn in (
        lambda a, b, t, c: siglip_loss(a, b, logit_scale=t, bias=c, backend=backend),
        siglip_by_formula,
    ):
        leaves = [
            x.clone().requires_grad_(),
            y.clone().requires_grad_(),
            torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True),
            torch.tensor(-3.0, dtype=torch.float64, requires_grad=True),
        ]
        loss = fn(*leaves)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_normalization_and_learnable_scalars(backend: str) -> None:
    x, y = (t.requires_grad_() for t in pairs(4, 3, seed=2))
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, t: clip_loss(a, b, temperature=t, backend=backend, reduction="none"),
        (x, y, tau),
    )
    assert torch.autograd.gradcheck(
        lambda a, b, t, c: siglip_loss(a, b, logit_scale=t, bias=c, backend=backend),
        (x, y, tau, bias),
    )


def test_temperature_and_logit_scale_are_two_spellings_of_one_scale() -> None:
    x, y = pairs(6, 3, seed=3)
    torch.testing.assert_close(
        clip_loss(x, y, temperature=0.25), clip_loss(x, y, logit_scale=math.log(4.0))
    )
    torch.testing.assert_close(clip_loss(x, y), clip_loss(x, y, temperature=0.07))


def test_reductions() -> None:
    x, y = pairs(6, 3, seed=4)
    for fn in (clip_loss, siglip_loss):
        per_pair = fn(x, y, reduction="none")
        assert per_pair.shape == (6,)
        torch.testing.assert_close(fn(x, y), per_pair.mean())
        torch.testing.assert_close(fn(x, y, reduction="sum"), per_pair.sum())


def test_siglip_per_pair_is_the_image_row_sum() -> None:
    # Planted: orthonormal identical towers, unit scale, bias 0.
    eye = torch.eye(3, dtype=torch.float64)
    got = siglip_loss(eye, eye, logit_scale=0.0, bias=0.0, reduction="none")
    expected = math.log1p(math.exp(-1.0)) + 2 * math.log(2.0)
    torch.testing.assert_close(got, torch.full((3,), expected, dtype=torch.float64))


def test_low_precision_is_computed_in_float32() -> None:
    x, y = pairs(4, 8, seed=5)
    for fn in (clip_loss, siglip_loss):
        low = fn(x.bfloat16(), y.bfloat16())
        assert low.dtype == torch.float32
        torch.testing.assert_close(
            low.double(), fn(x.bfloat16().double(), y.bfloat16().double()), rtol=1e-5, atol=1e-5
        )


@st.composite
def paired_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seed = draw(st.integers(0, 2**31 - 1))
    batch, dim = draw(st.integers(1, 7)), draw(st.integers(1, 5))
    x, y = pairs(batch, dim, seed)
    return x, y, torch.randperm(batch, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["clip", "siglip"])
@PROPERTY_SETTINGS
@given(data=paired_batches(), backend=st.sampled_from(BACKENDS))
def test_permuting_the_pairs_permutes_the_per_pair_losses(name: str, data, backend) -> None:
    fn = clip_loss if name == "clip" else siglip_loss
    x, y, perm = data
    per_pair = fn(x, y, reduction="none", backend=backend)
    torch.testing.assert_close(
        fn(x[perm], y[perm], reduction="none", backend=backend), per_pair[perm]
    )
    torch.testing.assert_close(fn(x[perm], y[perm], backend=backend), per_pair.mean())


@PROPERTY_SETTINGS
@given(data=paired_batches(), backend=st.sampled_from(BACKENDS), temperature=st.floats(0.02, 5.0))
def test_infonce_is_symmetric_under_swapping_towers(data, backend, temperature) -> None:
    x, y, _ = data
    torch.testing.assert_close(
        clip_loss(y, x, temperature=temperature, reduction="none", backend=backend),
        clip_loss(x, y, temperature=temperature, reduction="none", backend=backend),
    )
    # SigLIP's total (not its per-image rows) is symmetric too: z is.
    torch.testing.assert_close(
        siglip_loss(y, x, backend=backend), siglip_loss(x, y, backend=backend)
    )


@PROPERTY_SETTINGS
@given(data=paired_batches(), factor=st.floats(1e-3, 1e3))
def test_normalized_losses_ignore_the_scale_of_the_rows(data, factor) -> None:
    x, y, _ = data
    for fn in (clip_loss, siglip_loss):
        torch.testing.assert_close(fn(x * factor, y, backend="tiled"), fn(x, y, backend="tiled"))


def test_finite_at_extreme_scales() -> None:
    x, y = (t.requires_grad_() for t in pairs(5, 3, seed=6))
    for loss in (
        clip_loss(x, y, temperature=1e-4, backend="tiled"),
        # The largest log-scale accepted (a scale of 1000) and a large bias.
        siglip_loss(x, y, logit_scale=math.log(1000.0), bias=50.0, backend="tiled"),
    ):
        grads = torch.autograd.grad(loss, (x, y))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_modules_learn_their_scalars_and_keep_them_in_state_dict() -> None:
    x, y = pairs(6, 4, seed=7)
    clip = ClipLoss()
    assert isinstance(clip.logit_scale, torch.nn.Parameter)
    torch.testing.assert_close(float(clip.logit_scale.detach()), math.log(1 / 0.07))
    torch.testing.assert_close(clip.double()(x, y), clip_loss(x, y, temperature=0.07))
    clip(x, y).backward()
    assert clip.logit_scale.grad is not None and clip.logit_scale.grad != 0
    siglip = SigLipLoss()
    assert {name for name, _ in siglip.named_parameters()} == {"logit_scale", "bias"}
    torch.testing.assert_close(float(siglip.logit_scale.detach()), math.log(10.0))
    assert float(siglip.bias.detach()) == -10.0
    siglip(x.float(), y.float()).backward()
    assert siglip.logit_scale.grad is not None and siglip.bias.grad is not None
    frozen = SigLipLoss(learnable=False)
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"logit_scale", "bias"}
    assert set(ClipLoss(learnable=False).state_dict()) == {"logit_scale"}


def test_clip_module_clips_the_scale_at_max_scale() -> None:
    x, y = pairs(6, 4, seed=8)
    clip = ClipLoss(temperature=1e-3).double()  # e^t = 1000, above the default bound 100
    torch.testing.assert_close(clip(x, y), clip_loss(x, y, temperature=0.01))
    clip(x, y).backward()
    assert clip.logit_scale.grad == 0  # clipped: no gradient pushes it further
    unbounded = ClipLoss(temperature=1e-3, max_scale=None).double()
    torch.testing.assert_close(unbounded(x, y), clip_loss(x, y, temperature=1e-3))


def test_registry_entries() -> None:
    for name, cls in (("clip", ClipLoss), ("siglip", SigLipLoss)):
        info = get_loss_info(name)
        assert info.factory is cls and info.consumes == "paired_embeddings"
        assert info.requires_labels is False and info.citation
    assert isinstance(create_loss("clip", temperature=0.1, backend="tiled"), ClipLoss)
    assert "backend='tiled'" in repr(create_loss("siglip", backend="tiled"))
    with pytest.raises(TypeError, match="unknown keyword argument"):
        create_loss("siglip", temperature=0.1)
    assert {"ClipLoss", "SigLipLoss"} <= set(nodulebench.__all__)


X = torch.randn(4, 3)


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda: clip_loss(X, torch.randn(4, 5)),
            ValueError,
            "text_emb must have image_emb's shape (B, D) = (4, 3), one row per pair; got shape "
            "(4, 5)",
        ),
        (
            lambda: siglip_loss(X, torch.randn(5, 3)),
            ValueError,
            "text_emb must have image_emb's shape (B, D) = (4, 3), one row per pair; got shape "
            "(5, 3)",
        ),
        (
            lambda: clip_loss(X[None], X[None]),
            ValueError,
            "image_emb must have shape (B, D); got shape (1, 4, 3)",
        ),
        (
            lambda: clip_loss(X, X.double()),
            TypeError,
            "text_emb must have image_emb's dtype torch.float32; got torch.float64",
        ),
        (lambda: clip_loss(X, X.long()), TypeError, "text_emb must have a floating-point dtype"),
        (
            lambda: clip_loss(X, X, temperature=0.0),
            ValueError,
            "temperature must be a finite number > 0; got 0.0",
        ),
        (
            lambda: clip_loss(X, X, temperature=-0.1),
            ValueError,
            "temperature must be a finite number > 0; got -0.1",
        ),
        (
            lambda: clip_loss(X, X, temperature=torch.tensor(-0.5, requires_grad=True)),
            ValueError,
            "temperature must be a finite number > 0; got -0.5",
        ),
        (
            lambda: clip_loss(X, X, temperature=torch.tensor([0.1])),
            ValueError,
            "temperature must be a float or a 0-dim tensor (shape ()); got shape (1,)",
        ),
        (
            lambda: clip_loss(X, X, logit_scale=torch.ones(2, 2)),
            ValueError,
            "logit_scale must be a float or a 0-dim tensor (shape ()); got shape (2, 2)",
        ),
        (
            lambda: clip_loss(X, X, temperature=0.1, logit_scale=1.0),
            ValueError,
            "pass temperature or logit_scale, not both",
        ),
        (
            lambda: clip_loss(X, X, logit_scale=math.inf),
            ValueError,
            "logit_scale must be a finite number; got inf",
        ),
        (
            lambda: siglip_loss(X, X, bias=torch.zeros(1)),
            ValueError,
            "bias must be a float or a 0-dim tensor (shape ()); got shape (1,)",
        ),
        (
            lambda: siglip_loss(X, X, bias="0"),
            TypeError,
            "bias must be a real number or a 0-dim tensor; got str",
        ),
        (lambda: siglip_loss(X, X, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: clip_loss(X, X, backend="tiles"), ValueError, "(did you mean 'tiled'?)"),
        (
            lambda: clip_loss(X, X, backend="triton"),
            ValueError,
            "backend='triton' cannot compute 'clip' here",
        ),
        (lambda: ClipLoss(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (lambda: ClipLoss(max_scale=-1.0), ValueError, "max_scale must be a finite number > 0"),
        (lambda: ClipLoss(learnable=1), TypeError, "learnable must be a bool; got int"),
        (lambda: SigLipLoss(bias=math.nan), ValueError, "bias must be a finite number; got nan"),
        (
            lambda: SigLipLoss(logit_scale=None),
            TypeError,
            "logit_scale must be a real number; got NoneType",
        ),
    ],
)
def test_bad_inputs_are_named(call, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)
