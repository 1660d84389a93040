"""Every available backend against the dense reference, through the dispatcher.

Each backend is held to the tolerances it declares.
"""

from __future__ import annotations

import pytest
import torch

from nodulebench.kernels._dense import pack_pair_labels
from nodulebench.kernels.dispatch import BACKENDS, KERNEL_LOSSES, run_per_anchor

OPTIONS: dict[str, list[dict[str, object]]] = {
    "supcon": [{"temperature": 0.2, "variant": "out"}, {"temperature": 0.2, "variant": "in"}],
    "contrastive": [{"margin": 1.5}],
    "triplet_hard": [
        {"margin": 0.3, "distance": d} for d in ("euclidean", "squared_euclidean", "cosine")
    ],
    "triplet_all": [
        {"margin": 0.3, "distance": d} for d in ("euclidean", "squared_euclidean", "cosine")
    ],
    "multi_similarity": [{"alpha": 2.0, "beta": 10.0, "base": 0.5, "epsilon": 0.1}],
    "cnc": [{"temperature": 0.2, "variant": "out"}, {"temperature": 0.2, "variant": "in"}],
}


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (13,), generator=gen).repeat_interleave(2)  # 2 views
    labels[-2:] = 99  # a sample whose two views are each other's only positives
    labels[0] = 98  # a row without positives
    z = torch.nn.functional.normalize(torch.randn(26, 5, generator=gen, dtype=torch.float64), dim=1)
    return z.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("backend", "loss"),
    [
        (name, loss)
        for name in BACKENDS
        if name != "reference"
        for loss in KERNEL_LOSSES
        if loss in BACKENDS[name].options
    ],
)
def test_backend_matches_reference(backend: str, loss: str, dtype: torch.dtype) -> None:
    z, labels = inputs(dtype)
    if loss == "cnc":  # pair labels: a class and a first model's prediction
        labels = pack_pair_labels(labels % 2, labels // 2 % 2)
    info = BACKENDS[backend]
    for options in OPTIONS[loss]:
        if info.why_not(loss, z, options) is not None:
            pytest.skip(f"{backend} cannot serve here: {info.why_not(loss, z, options)}")
        z_ref = z.double().requires_grad_()
        expected = run_per_anchor(loss, z_ref, labels, backend="reference", **options)
        (expected_grad,) = torch.autograd.grad(expected[0].sum(), z_ref)
        z_k = z.clone().requires_grad_()
        got = run_per_anchor(loss, z_k, labels, backend=backend, **options)
        (grad,) = torch.autograd.grad(got[0].sum(), z_k)
        rtol, atol = info.tolerances[dtype]
        for value, reference in zip(got, expected, strict=True):
            if value.is_floating_point():
                torch.testing.assert_close(
                    value.double(), reference.detach().double(), rtol=rtol, atol=atol
                )
            else:
                assert torch.equal(value, reference)
        torch.testing.assert_close(grad.double(), expected_grad, rtol=rtol, atol=atol)
