"""A temperature may be a 0-dim tensor with a gradient, or CLIP's log-scale, on every backend."""

from __future__ import annotations

import math

import pytest
import torch

from _loss_cases import make_batch, ref_supcon
from nodulebench import NTXentLoss, SupConLoss
from nodulebench.losses import functional as LF

BACKENDS = ["reference", "tiled"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["out", "in"])
def test_tensor_temperature_gives_the_float_loss(backend: str, variant: str) -> None:
    embeddings, labels = make_batch(0, 6, 2, 4, 3)
    tau = torch.tensor(0.3, dtype=torch.float64)
    got = LF.supcon_loss(
        embeddings, labels, temperature=tau, variant=variant, backend=backend, reduction="none"
    )
    want = ref_supcon(embeddings, labels, temperature=0.3, variant=variant, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("log_scale", [False, True])
def test_exact_gradient_to_the_temperature(backend: str, log_scale: bool) -> None:
    embeddings, labels = make_batch(1, 5, 2, 3, 2)
    embeddings.requires_grad_(True)
    value = torch.tensor(
        math.log(1 / 0.4) if log_scale else 0.4, dtype=torch.float64, requires_grad=True
    )

    def loss(e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return LF.supcon_loss(
            e, labels, temperature=t, log_scale=log_scale, base_temperature=0.07, backend=backend
        )

    assert torch.autograd.gradcheck(loss, (embeddings, value))


def test_log_scale_is_clips_logit_scale() -> None:
    embeddings, labels = make_batch(2, 6, None, 4, 2)
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    torch.testing.assert_close(
        LF.supcon_loss(embeddings, labels, temperature=logit_scale, log_scale=True),
        LF.supcon_loss(embeddings, labels, temperature=0.07),
        rtol=1e-12,
        atol=1e-12,
    )
    # A float log-scale is read the same way.
    torch.testing.assert_close(
        LF.supcon_loss(embeddings, labels, temperature=math.log(1 / 0.07), log_scale=True),
        LF.supcon_loss(embeddings, labels, temperature=0.07),
        rtol=1e-12,
        atol=1e-12,
    )


def test_tensor_temperature_with_a_reference_set() -> None:
    embeddings, labels = make_batch(3, 4, None, 3, 2)
    bank, bank_labels = make_batch(4, 6, None, 3, 2)
    tau = torch.tensor(0.5, dtype=torch.float64)
    got = LF.supcon_loss(embeddings, labels, ref_emb=bank, ref_labels=bank_labels, temperature=tau)
    want = ref_supcon(embeddings, labels, ref_emb=bank, ref_labels=bank_labels, temperature=0.5)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_parameter_temperature_is_learned_by_the_module() -> None:
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss_fn = NTXentLoss(temperature=logit_scale, log_scale=True)
    assert [name for name, _ in loss_fn.named_parameters()] == ["temperature"]
    assert "temperature" in loss_fn.state_dict()
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    loss_fn(a, b).backward()
    assert logit_scale.grad is not None and logit_scale.grad != 0
    before = logit_scale.detach().clone()
    optimizer.step()
    assert logit_scale.detach() != before
    assert "requires_grad=True" in repr(loss_fn)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"temperature": torch.tensor([0.1])},
            ValueError,
            r"temperature must be a float or a 0-dim tensor; got a tensor of shape \(1,\)",
        ),
        (
            {"temperature": torch.tensor(1)},
            TypeError,
            "temperature must be a floating tensor; got dtype torch.int64",
        ),
        ({"temperature": torch.tensor(-0.1)}, ValueError, "temperature must be > 0"),
        ({"temperature": torch.tensor(0.0)}, ValueError, "temperature must be > 0"),
        ({"temperature": torch.tensor(float("nan"))}, ValueError, "temperature must be > 0"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
        ({"temperature": "0.1"}, TypeError, "temperature must be a real number or a 0-dim"),
        (
            {"temperature": torch.tensor(float("inf")), "log_scale": True},
            ValueError,
            "temperature \\(a log-scale\\) must be finite",
        ),
        ({"log_scale": 1}, TypeError, "log_scale must be a bool"),
    ],
)
def test_bad_temperatures_get_named_errors(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        SupConLoss(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        LF.supcon_loss(torch.randn(4, 2, 3), **kwargs)


def test_a_negative_log_scale_is_a_valid_temperature() -> None:
    loss = SupConLoss(temperature=torch.tensor(-1.0), log_scale=True)  # tau = e
    assert torch.isfinite(loss(torch.randn(4, 2, 3)))
