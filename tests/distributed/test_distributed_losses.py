"""Every pairwise loss with gather_distributed=True equals the single-process loss."""

from __future__ import annotations

import pytest
import torch
from _dist_cases import LAYOUT_REDUCTIONS, LAYOUTS, REDUCTIONS, WORLD_SIZES
from _dist_loss_cases import LOSS_BACKENDS, call_loss, loss_inputs, loss_keys

import nodulebench
from nodulebench.kernels.dispatch import TILED_CROSSOVER, select_backend
from nodulebench.losses import functional as LF

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize(
    ("name", "backend", "layout", "input_kind"),
    list(loss_keys()),
    ids=["-".join(key) for key in loss_keys()],
)
def test_loss_and_gradient_equal_single_process(
    distributed_results,
    world_size: int,
    name: str,
    backend: str,
    layout: str,
    input_kind: str,
) -> None:
    embeddings, labels = loss_inputs(layout, input_kind, world_size)
    per_rank = distributed_results(world_size, "losses")
    sizes = LAYOUTS[layout][world_size]
    for reduction in LAYOUT_REDUCTIONS[layout]:
        rows = embeddings.clone().requires_grad_(True)
        single = call_loss(name, backend, rows, labels, reduction)
        single.sum().backward()
        assert rows.grad is not None
        assert rows.grad.abs().sum() > 0, "vacuous case: the loss has no gradient"
        results = [r["/".join((name, backend, layout, input_kind, reduction))] for r in per_rank]
        if reduction == "none":
            torch.testing.assert_close(
                torch.cat([r["loss"] for r in results]), single.detach(), **TIGHT
            )
        else:
            average = sum(r["loss"] for r in results) / world_size
            torch.testing.assert_close(average, single.detach(), **TIGHT)
        scale = 1 if reduction == "none" else world_size
        grads = torch.cat([r["grad"] for r in results]) / scale
        assert [r["grad"].shape[0] for r in results] == list(sizes)
        torch.testing.assert_close(grads, rows.grad, **TIGHT)


@pytest.mark.parametrize(
    ("name", "backend"), [(name, b) for name, bs in LOSS_BACKENDS.items() for b in bs]
)
def test_gather_without_process_group_is_the_plain_loss(name: str, backend: str) -> None:
    embeddings, labels = loss_inputs("uneven", "views", 2)
    for reduction in REDUCTIONS:
        plain = call_loss(name, backend, embeddings, labels, reduction)
        gathered = call_loss(name, backend, embeddings, labels, reduction, gather_distributed=True)
        torch.testing.assert_close(gathered, plain, rtol=0, atol=0)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_forcing_triton_with_gather_fails_on_every_rank(distributed_results, world_size):
    for res in distributed_results(world_size, "backend_refusal"):
        assert "backend='triton' cannot compute 'supcon' here" in res["message"]
        assert "gather_distributed=True needs this rank's rows" in res["message"]


def test_dispatch_with_an_anchor_range() -> None:
    z = torch.nn.functional.normalize(torch.randn(2048, 8), dim=1)
    with pytest.raises(ValueError, match="it computes every row against every row only"):
        select_backend("supcon", "triton", z, variant="out", row_range=(0, 2))
    # "auto" compares anchors x rows with the square of the single-process crossover.
    crossover = TILED_CROSSOVER["supcon"]
    wide = (0, crossover**2 // z.shape[0])
    assert select_backend("supcon", "auto", z, variant="out", row_range=wide) == "tiled"
    narrow = (0, wide[1] - 1)
    assert select_backend("supcon", "auto", z, variant="out", row_range=narrow) == "reference"


def test_modules_and_registry_accept_the_distributed_options() -> None:
    for name in ("supcon", "ntxent", "contrastive", "triplet", "multi_similarity"):
        loss = nodulebench.create_loss(name, gather_distributed=True, process_group=None)
        assert loss.gather_distributed is True
        assert "gather_distributed=True" in repr(loss)
    embeddings, labels = loss_inputs("even", "views", 2)
    module = nodulebench.SupConLoss(gather_distributed=True)
    torch.testing.assert_close(
        module(embeddings, labels), LF.supcon_loss(embeddings, labels), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda: nodulebench.SupConLoss(gather_distributed=1),
            TypeError,
            "gather_distributed must be a bool; got int",
        ),
        (
            lambda: LF.supcon_loss(torch.randn(4, 3), gather_distributed="yes"),
            TypeError,
            "gather_distributed must be a bool; got str",
        ),
        (
            lambda: LF.contrastive_loss(
                torch.randn(4, 3),
                torch.zeros(4, dtype=torch.long),
                gather_distributed=True,
                process_group="world",
            ),
            TypeError,
            "group must be a torch.distributed.ProcessGroup or None; got str",
        ),
    ],
)
def test_bad_distributed_options_are_named(call, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)
