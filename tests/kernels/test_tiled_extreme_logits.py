"""The tiled engine at extreme logits (float32, ``normalize=False``, |logit| up to 1e9).

Every loss the tiled backend serves is computed on float32 inputs by the tiled engine and
by the dense backend, and on the same values in float64 by the dense backend (the exact
value up to float64 rounding). The tiled error must stay within a small multiple of the
dense float32 error (the rounding of the float32 logits themselves), a value that is
exactly 0 must come out as exactly 0, and no loss may be negative.
"""

from __future__ import annotations

import pytest
import torch

from nodulebench import create_loss

# Cases that failed before the log-sum-exp was kept relative to each row's maximum:
# (loss, options, seed) with the inputs drawn below; the seeds include duplicated views,
# single pairs and one-class batches.
TILED_LOSSES = {
    "supcon-out": ("supcon", {"variant": "out", "temperature": 0.1}),
    "supcon-in": ("supcon", {"variant": "in", "temperature": 0.1}),
    "ntxent": ("ntxent", {"temperature": 0.1}),
    "cnc": ("cnc", {"temperature": 0.1}),
    "clip": ("clip", {"temperature": 0.1}),
    "siglip": ("siglip", {}),
    "contrastive": ("contrastive", {}),
    "triplet": ("triplet", {"mining": "all"}),
    "multi_similarity": ("multi_similarity", {}),
}
SCALES = (1.0, 1e2, 1e4, 3e4)  # |z|^2 / tau reaches about 1e9 at the largest


def draw_inputs(name: str, seed: int) -> tuple[tuple[torch.Tensor, ...], float]:
    """float32 inputs of loss ``name`` for ``seed``, and their largest |z_i . z_j| / tau."""
    gen = torch.Generator().manual_seed(seed)
    batch = 1 + seed % 4
    dim = 1 + (seed // 4) % 3
    scale = SCALES[(seed // 12) % len(SCALES)]
    z = torch.randn(batch, 2, dim, generator=gen) * scale
    if seed % 3 == 0:
        z[:, 1] = z[:, 0]  # duplicated views: ties at the row maximum
    labels = torch.randint(0, 2, (batch,), generator=gen)
    flat = z.reshape(-1, dim).double()
    largest = float((flat @ flat.T).abs().max()) / 0.1
    if name in ("clip", "siglip", "ntxent"):
        return (z[:, 0].contiguous(), z[:, 1].contiguous()), largest
    if name == "cnc":
        return (z, labels, torch.randint(0, 2, (batch,), generator=gen)), largest
    return (z, labels), largest


def evaluate(name: str, options: dict[str, object], backend: str, inputs: tuple) -> torch.Tensor:
    loss_fn = create_loss(name, backend=backend, normalize=False, reduction="none", **options)
    with torch.no_grad():
        return loss_fn(*inputs).double()


@pytest.mark.parametrize("key", sorted(TILED_LOSSES))
def test_tiled_keeps_dense_accuracy_at_extreme_logits(key: str) -> None:
    name, options = TILED_LOSSES[key]
    for seed in range(48):
        inputs, largest = draw_inputs(name, seed)
        exact = evaluate(
            name,
            options,
            "reference",
            tuple(x.double() if x.is_floating_point() else x for x in inputs),
        )
        dense = evaluate(name, options, "reference", inputs)
        tiled = evaluate(name, options, "tiled", inputs)
        dense_error = float((dense - exact).abs().max())
        # The float32 logits are themselves off by about 2**-24 of the largest one.
        allowed = 4 * dense_error + 2.0**-20 * max(largest, float(exact.abs().max()), 1.0)
        assert float((tiled - exact).abs().max()) <= allowed, (key, seed, tiled, exact)
        assert torch.equal(tiled[exact == 0], exact[exact == 0]), (key, seed, tiled, exact)
        assert (tiled >= 0).all(), (key, seed, tiled)


def test_clip_single_pair_at_huge_logits_is_exactly_zero() -> None:
    # One pair: each direction has one candidate, its own partner, so the loss is 0.
    image = torch.tensor([[3.0e4, -2.0e4]])
    text = torch.tensor([[2.9e4, -2.1e4]])
    loss_fn = create_loss("clip", backend="tiled", normalize=False, reduction="sum")
    assert float(loss_fn(image, text).detach()) == 0.0


def test_supcon_one_positive_no_negative_at_huge_logits_is_exactly_zero() -> None:
    z = torch.tensor([[[3.0e4, 1.0e3], [2.0e4, -1.0e4]]])  # one sample, two views
    loss_fn = create_loss("supcon", backend="tiled", normalize=False, temperature=0.1)
    assert float(loss_fn(z, torch.tensor([0])).detach()) == 0.0


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4, 1e5])
def test_clip_gradient_on_duplicated_pairs_is_zero_at_large_scale(scale: float) -> None:
    # Two distinct pairs, each twice: every image's softmax is 1/2 on its own text and
    # 1/2 on the duplicate's (the other pair underflows), so image i's gradient
    # s (0.5 y_i + 0.5 y_i - y_i) is exactly 0; so is each text's (float64).
    gen = torch.Generator().manual_seed(int(scale))
    distinct = torch.eye(2, 3, dtype=torch.float64)
    distinct = (distinct + 0.1 * torch.randn(2, 3, generator=gen, dtype=torch.float64)) * scale
    pairs = torch.cat([distinct, distinct])
    grads = {}
    for backend in ("reference", "tiled"):
        image, text = pairs.clone().requires_grad_(), pairs.clone().requires_grad_()
        loss_fn = create_loss(
            "clip", backend=backend, normalize=False, reduction="sum", learnable=False
        )
        loss_fn(image, text).backward()
        grads[backend] = torch.cat([image.grad, text.grad])
    assert float(grads["reference"].abs().max()) == 0.0  # the planted truth, densely
    assert float(grads["tiled"].abs().max()) <= 1e-12 * scale
