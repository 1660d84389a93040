"""Two-tower kernels: tiled against dense and against a loop over pairs, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from nodulebench.kernels.dispatch import (
    BACKENDS,
    TWO_TOWER_LOSSES,
    run_per_anchor,
    run_two_tower,
    select_backend,
)
from nodulebench.kernels.tiled_two_tower import clip_tiled, siglip_tiled
from nodulebench.kernels.two_tower_reference import clip_reference, siglip_reference


def clip_loop(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, anchors: range
) -> torch.Tensor:
    """InfoNCE per pair, one logit at a time (independent of the library)."""
    out = []
    for i in anchors:
        row = torch.stack([scale * torch.dot(x[i], y[j]) for j in range(len(y))])
        col = torch.stack([scale * torch.dot(x[k], y[i]) for k in range(len(x))])
        out.append(
            0.5 * (torch.log(torch.exp(row).sum()) - row[i])
            + 0.5 * (torch.log(torch.exp(col).sum()) - col[i])
        )
    return torch.stack(out)


def siglip_loop(
    x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, anchors: range
) -> torch.Tensor:
    """SigLIP per image row, one pair at a time: -sum_j log sigmoid(z_ij (s x_i.y_j + b))."""
    out = []
    for i in anchors:
        terms = []
        for j in range(len(y)):
            z = 1.0 if i == j else -1.0
            terms.append(-torch.log(torch.sigmoid(z * (scale * torch.dot(x[i], y[j]) + bias))))
        out.append(torch.stack(terms).sum())
    return torch.stack(out)


def towers(n: int, dim: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x, y = (
        torch.nn.functional.normalize(
            torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1
        )
        for _ in range(2)
    )
    scale = torch.tensor(4.0, dtype=torch.float64)
    bias = torch.tensor(-1.5, dtype=torch.float64)
    return x, y, scale, bias


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.clone().requires_grad_(True) for t in tensors]


ROW_RANGES = [None, (0, 7), (2, 5), (0, 3), (6, 7)]


@pytest.mark.parametrize("row_range", ROW_RANGES)
@pytest.mark.parametrize("block_size", [1, 2, 3, 7, None])
def test_clip_tiled_equals_the_loop_and_the_dense_reference(row_range, block_size) -> None:
    x, y, scale, _ = towers(7)
    anchors = range(*(row_range or (0, 7)))
    weights = torch.randn(
        len(anchors), dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    results = []
    for fn in (
        lambda a, b, s: clip_tiled(a, b, scale=s, block_size=block_size, row_range=row_range)[0],
        lambda a, b, s: clip_reference(a, b, scale=s, row_range=row_range)[0],
        lambda a, b, s: clip_loop(a, b, s, anchors),
    ):
        inputs = leaves(x, y, scale)
        loss = fn(*inputs)
        grads = torch.autograd.grad((loss * weights).sum(), inputs)
        results.append((loss, grads))
    (tiled, tiled_grads), *others = results
    for loss, grads in others:
        torch.testing.assert_close(tiled, loss, rtol=1e-12, atol=1e-12)
        for got, expected in zip(tiled_grads, grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("row_range", ROW_RANGES)
@pytest.mark.parametrize("block_size", [1, 3, None])
def test_siglip_tiled_equals_the_loop_and_the_dense_reference(row_range, block_size) -> None:
    x, y, scale, bias = towers(7, seed=2)
    anchors = range(*(row_range or (0, 7)))
    weights = torch.randn(
        len(anchors), dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    results = []
    for fn in (
        lambda a, b, s, c: siglip_tiled(
            a, b, scale=s, bias=c, block_size=block_size, row_range=row_range
        )[0],
        lambda a, b, s, c: siglip_reference(a, b, scale=s, bias=c, row_range=row_range)[0],
        lambda a, b, s, c: siglip_loop(a, b, s, c, anchors),
    ):
        inputs = leaves(x, y, scale, bias)
        loss = fn(*inputs)
        grads = torch.autograd.grad((loss * weights).sum(), inputs)
        results.append((loss, grads))
    (tiled, tiled_grads), *others = results
    for loss, grads in others:
        torch.testing.assert_close(tiled, loss, rtol=1e-12, atol=1e-12)
        for got, expected in zip(tiled_grads, grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("row_range", [None, (1, 4)])
def test_tiled_gradcheck_float64(row_range) -> None:
    x, y, scale, bias = leaves(*towers(5, dim=2, seed=4))
    assert torch.autograd.gradcheck(
        lambda a, b, s: clip_tiled(a, b, scale=s, block_size=2, row_range=row_range)[0],
        (x, y, scale),
    )
    assert torch.autograd.gradcheck(
        lambda a, b, s, c: siglip_tiled(a, b, scale=s, bias=c, block_size=2, row_range=row_range)[
            0
        ],
        (x, y, scale, bias),
    )


def test_planted_values() -> None:
    # Orthonormal towers, identical: every off-pair logit is 0, the own pair's is s.
    eye = torch.eye(4, dtype=torch.float64)
    scale = torch.tensor(3.0, dtype=torch.float64)
    expected_clip = math.log(math.exp(3.0) + 3.0) - 3.0
    for loss in (
        clip_tiled(eye, eye, scale=scale, block_size=3)[0],
        clip_reference(eye, eye, scale=scale)[0],
    ):
        torch.testing.assert_close(loss, torch.full((4,), expected_clip, dtype=torch.float64))
    bias = torch.tensor(-1.0, dtype=torch.float64)
    # Own pair: -log sigmoid(3 - 1); three others: -log sigmoid(-(0 - 1)).
    expected_siglip = math.log1p(math.exp(-2.0)) + 3 * math.log1p(math.exp(-1.0))
    for loss in (
        siglip_tiled(eye, eye, scale=scale, bias=bias, block_size=3)[0],
        siglip_reference(eye, eye, scale=scale, bias=bias)[0],
    ):
        torch.testing.assert_close(loss, torch.full((4,), expected_siglip, dtype=torch.float64))


def test_tiled_float32_matches_float64_reference() -> None:
    x, y, scale, bias = towers(64, dim=16, seed=5)
    tolerance = dict(
        zip(("rtol", "atol"), BACKENDS["tiled"].tolerances[torch.float32], strict=True)
    )
    got = clip_tiled(x.float(), y.float(), scale=scale.float(), block_size=24)[0]
    torch.testing.assert_close(got.double(), clip_reference(x, y, scale=scale)[0], **tolerance)
    got = siglip_tiled(x.float(), y.float(), scale=scale.float(), bias=bias.float(), block_size=24)[
        0
    ]
    torch.testing.assert_close(
        got.double(), siglip_reference(x, y, scale=scale, bias=bias)[0], **tolerance
    )


def test_dispatch_serves_two_tower_losses_and_triton_declines() -> None:
    x, y, scale, bias = towers(6)
    for backend in ("reference", "tiled"):
        loss, valid = run_two_tower("siglip", x, y, backend=backend, scale=scale, bias=bias)
        torch.testing.assert_close(loss, siglip_reference(x, y, scale=scale, bias=bias)[0])
        assert valid.all()
    assert select_backend("clip", "auto", x) == "reference"
    for loss in TWO_TOWER_LOSSES:
        with pytest.raises(
            ValueError,
            match=rf"backend='triton' cannot compute '{loss}' here: "
            r"the SupCon kernels compare one tower",
        ):
            select_backend(loss, "triton", x)
    with pytest.raises(ValueError, match="loss must be one of 'clip', 'siglip'; got 'supcon'"):
        run_two_tower("supcon", x, y, scale=scale)
    with pytest.raises(ValueError, match="loss must be one of 'supcon', .*; got 'clip'"):
        run_per_anchor("clip", x, torch.arange(6), scale=scale)


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda x, s: clip_tiled(x, x[:, :2], scale=s),
            ValueError,
            "text must match image's shape (4, 3)",
        ),
        (
            lambda x, s: clip_tiled(x, x, scale=s[None]),
            ValueError,
            "scale must be a 0-dim tensor; got (1,)",
        ),
        (
            lambda x, s: clip_tiled(x, x, scale=s.float()),
            ValueError,
            "scale must have image's dtype torch.float64",
        ),
        (
            lambda x, s: siglip_tiled(x, x, scale=s, bias=0.0),
            ValueError,
            "bias must be a 0-dim tensor; got float",
        ),
        (
            lambda x, s: clip_tiled(x.half(), x.half(), scale=s.half()),
            TypeError,
            "image must be float32 or float64",
        ),
        (
            lambda x, s: clip_tiled(x, x, scale=s, block_size=0),
            ValueError,
            "block_size must be a positive int or None; got 0",
        ),
        (
            lambda x, s: clip_tiled(x, x, scale=s, row_range=(3, 9)),
            ValueError,
            "row_range must be a (start, stop) pair",
        ),
    ],
)
def test_tiled_bad_inputs_are_named(call, exc, fragment) -> None:
    x, _, scale, _ = towers(4)
    with pytest.raises(exc) as info:
        call(x, scale)
    assert fragment in str(info.value)


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_step_with_a_learnable_scale_matches_eager() -> None:
    gen = torch.Generator().manual_seed(0)
    images, texts = (torch.randn(9, 5, generator=gen, dtype=torch.float64) for _ in range(2))

    def make_step() -> tuple[torch.nn.Module, torch.Tensor, object]:
        towers = torch.nn.Linear(5, 4, dtype=torch.float64)
        with torch.no_grad():
            towers.weight.copy_(torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(4, 5))
            towers.bias.zero_()
        logit_scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            towers.zero_grad()
            logit_scale.grad = None
            image, text = (torch.nn.functional.normalize(towers(t), dim=1) for t in (x, y))
            loss = clip_tiled(image, text, scale=logit_scale.exp(), block_size=4)[0].mean()
            loss = (
                loss
                + siglip_tiled(
                    image, text, scale=logit_scale.exp(), bias=-logit_scale, block_size=4
                )[0].mean()
            )
            loss.backward()
            return loss.detach()

        return towers, logit_scale, step

    eager_towers, eager_scale, eager_step = make_step()
    compiled_towers, compiled_scale, compiled_fn = make_step()
    compiled_step = torch.compile(compiled_fn, backend="aot_eager")
    torch.testing.assert_close(compiled_step(images, texts), eager_step(images, texts))
    torch.testing.assert_close(compiled_towers.weight.grad, eager_towers.weight.grad)
    assert eager_scale.grad is not None and eager_scale.grad != 0
    torch.testing.assert_close(compiled_scale.grad, eager_scale.grad)
