"""GroupDRO and Correct-N-Contrast with gather_distributed=True on 3 gloo ranks.

GroupDRO: every rank holds the same weights after each step, equal to the weights of one
process on the whole batch, and the rank losses and gradients average to the
single-process ones (DDP's gradient averaging). CnC: the exactness contract of
:mod:`nodulebench.distributed` on the reference and tiled backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from nodulebench import GroupDROLoss
from nodulebench.losses.group_robust import cnc_loss

WORLD_SIZE = 3
ROWS = (4, 2, 5)  # samples per rank (uneven)
STEPS = 3
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def rank_slice(rank: int) -> slice:
    start = sum(ROWS[:rank])
    return slice(start, start + ROWS[rank])


def dro_inputs(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    batch = sum(ROWS)
    logits = 2.0 * torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    groups = 2 * labels + torch.randint(0, 2, (batch,), generator=gen)
    groups[groups == 3] = 2  # group 3 is absent from every batch
    return logits, labels, groups


def cnc_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    batch = sum(ROWS)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.4
    return (
        torch.randn(batch, 2, 4, generator=gen, dtype=torch.float64),
        labels,
        torch.where(flips, 1 - labels, labels),
    )


def run_ranks(rank: int, world_size: int) -> dict[str, Any]:
    mine = rank_slice(rank)
    results: dict[str, Any] = {"dro": []}
    loss_fn = GroupDROLoss(num_groups=4, step_size=0.5, gather_distributed=True)
    for step in range(STEPS):
        logits, labels, groups = dro_inputs(step)
        rows = logits[mine].clone().requires_grad_(True)
        loss = loss_fn(rows, labels[mine], groups[mine])
        loss.backward()
        results["dro"].append(
            {"loss": loss.detach(), "grad": rows.grad, "weights": loss_fn.group_weights.clone()}
        )
    embeddings, labels, predictions = cnc_inputs()
    for backend in ("reference", "tiled"):
        rows = embeddings[mine].clone().requires_grad_(True)
        loss = cnc_loss(
            rows,
            labels[mine],
            predictions[mine],
            temperature=0.4,
            backend=backend,
            gather_distributed=True,
        )
        loss.backward()
        results[backend] = {"loss": loss.detach(), "grad": rows.grad}
    return results


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    from _dist_launch import run_distributed

    workdir: Path = tmp_path_factory.mktemp("group_robust")
    return run_distributed(run_ranks, WORLD_SIZE, workdir)


def test_group_dro_weights_losses_and_gradients_equal_single_process(
    per_rank: list[dict[str, Any]],
) -> None:
    single = GroupDROLoss(num_groups=4, step_size=0.5)
    for step in range(STEPS):
        logits, labels, groups = dro_inputs(step)
        leaf = logits.clone().requires_grad_(True)
        loss = single(leaf, labels, groups)
        loss.backward()
        results = [r["dro"][step] for r in per_rank]
        for result in results:
            torch.testing.assert_close(result["weights"], single.group_weights, **TIGHT)
        torch.testing.assert_close(
            sum(r["loss"] for r in results) / WORLD_SIZE, loss.detach(), **TIGHT
        )
        torch.testing.assert_close(
            torch.cat([r["grad"] for r in results]) / WORLD_SIZE, leaf.grad, **TIGHT
        )
    assert single.group_weights[3] < 0.25  # the absent group: renormalised only


@pytest.mark.parametrize("backend", ["reference", "tiled"])
def test_cnc_loss_and_gradients_equal_single_process(
    per_rank: list[dict[str, Any]], backend: str
) -> None:
    embeddings, labels, predictions = cnc_inputs()
    leaf = embeddings.clone().requires_grad_(True)
    single = cnc_loss(leaf, labels, predictions, temperature=0.4, backend=backend)
    single.backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    results = [r[backend] for r in per_rank]
    torch.testing.assert_close(
        sum(r["loss"] for r in results) / WORLD_SIZE, single.detach(), **TIGHT
    )
    torch.testing.assert_close(
        torch.cat([r["grad"] for r in results]) / WORLD_SIZE, leaf.grad, **TIGHT
    )
