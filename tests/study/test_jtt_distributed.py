"""JTT under DDP: the ranks' averaged gradient is the single-process gradient (2 gloo ranks).

The upweighted errors fall unevenly on the ranks (weight sums 4 and 16), the case where
a per-rank weighted mean would be wrong. Float64 throughout, so the comparison is tight.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from nodulebench.losses.functional import cross_entropy_loss
from study.parallel import Parallel
from study.training import weighted_mean

# The launcher lives beside the distributed tests (the children get the study package from
# the launcher's PYTHONPATH, the parent from pytest's ``pythonpath``).
_LAUNCHER = Path(__file__).resolve().parents[1] / "distributed"
if str(_LAUNCHER) not in sys.path:
    sys.path.insert(0, str(_LAUNCHER))

WORLD_SIZE = 2
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images as features ``(8, 3)``, labels, and JTT weights (errors upweighted 5 times)."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    weights = torch.tensor([1.0, 1, 1, 1, 5, 5, 1, 5], dtype=torch.float64)
    return features, labels, weights


def model() -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        return nn.Linear(3, 2).double()


def loss_and_grad(parallel: Parallel, ddp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's JTT loss and the weight gradient (DDP-averaged when ``ddp``)."""
    features, labels, weights = batch()
    net = model()
    forward = nn.parallel.DistributedDataParallel(net) if ddp else net
    logits = forward(parallel.shard(features))
    per_image = cross_entropy_loss(logits, parallel.shard(labels), reduction="none")
    loss = weighted_mean(per_image, parallel.shard(weights), parallel)
    loss.backward()
    assert net.weight.grad is not None
    return loss.detach(), net.weight.grad


def run_ranks(rank: int, world_size: int) -> dict[str, Any]:
    loss, grad = loss_and_grad(Parallel(rank, world_size), ddp=True)
    # The DDP module sits in a reference cycle: freed only at shutdown, after the process
    # group, it would abort the process (as study.parallel.close_parallel explains).
    gc.collect()
    dist.barrier()
    return {"loss": loss, "grad": grad}


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    from _dist_launch import run_distributed

    return run_distributed(run_ranks, WORLD_SIZE, tmp_path_factory.mktemp("jtt"))


def test_ddp_gradient_equals_the_single_process_gradient(per_rank) -> None:
    single_loss, single_grad = loss_and_grad(Parallel(), ddp=False)
    for result in per_rank:  # DDP leaves the same averaged gradient on every rank
        torch.testing.assert_close(result["grad"], single_grad, **TIGHT)
    mean_loss = sum(result["loss"] for result in per_rank) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, single_loss, **TIGHT)


def test_a_per_rank_weighted_mean_would_not_be_exact() -> None:
    """The planted batch can tell: per-rank means, averaged, miss the gradient."""
    features, labels, weights = batch()
    _, single_grad = loss_and_grad(Parallel(), ddp=False)
    grads = []
    for rank in range(WORLD_SIZE):
        shard = Parallel(rank, WORLD_SIZE).shard
        net = model()
        per_image = cross_entropy_loss(net(shard(features)), shard(labels), reduction="none")
        ((shard(weights) * per_image).sum() / shard(weights).sum()).backward()
        grads.append(net.weight.grad)
    averaged = sum(grads) / WORLD_SIZE
    assert not torch.allclose(averaged, single_grad, rtol=1e-3, atol=1e-6)
