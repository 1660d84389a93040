"""What every rank runs in the distributed tests, and the inputs it shares with the parent.

One launch of 3 processes serves both world sizes: the 3-rank cases run on the default
(world) group, the 2-rank cases on a subgroup of ranks 0 and 1 passed as ``group`` /
``process_group``, so the non-default group path is exercised too. Each rank rebuilds
the same global batch from a fixed seed, keeps its own contiguous slice of samples, runs
every case and returns plain tensors; the parent recomputes the single-process result on
the whole batch and compares. ``run_all_cases`` catches each case's exception, so one
broken case reports its traceback without hiding the others.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodulebench.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    gather_sizes,
    get_rank,
    get_world_size,
    is_distributed,
    local_row_offset,
    sum_over_ranks,
)

WORLD_SIZES = (2, 3)
LAUNCH_WORLD_SIZE = max(WORLD_SIZES)
Group = dist.ProcessGroup | None
# Local batch sizes (samples per rank); "uneven" includes a rank with a single sample.
LAYOUTS: dict[str, dict[int, tuple[int, ...]]] = {
    "even": {2: (4, 4), 3: (4, 4, 4)},
    "uneven": {2: (5, 2), 3: (3, 6, 1)},
}
# The gather helpers must also cope with a rank that holds no rows at all.
GATHER_SIZES: dict[int, tuple[int, ...]] = {2: (3, 0), 3: (2, 0, 5)}
REDUCTIONS = ("mean", "sum", "none")
# The loss cases check every reduction on uneven local batches (the harder case) and the
# default "mean" on even ones, to keep the multi-process tests within seconds.
LAYOUT_REDUCTIONS: dict[str, tuple[str, ...]] = {"even": ("mean",), "uneven": REDUCTIONS}
DIM = 5


def sample_offset(sizes: tuple[int, ...], rank: int) -> int:
    return sum(sizes[:rank])


def global_batch(
    num_samples: int, views: int | None, *, seed: int, num_classes: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 embeddings (B, D) or (B, V, D) and int64 labels (B,), same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    shape = (num_samples, DIM) if views is None else (num_samples, views, DIM)
    embeddings = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (num_samples,), generator=gen)
    return embeddings, labels


def gather_weights(total_rows: int, rank: int) -> torch.Tensor:
    """The rank-specific weights of the test objective ``(gathered * weights).sum()``."""
    gen = torch.Generator().manual_seed(1000 + rank)
    return torch.randn(total_rows, 2, DIM, generator=gen, dtype=torch.float64)


def case_gather(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    sizes = GATHER_SIZES[world_size]
    full = global_batch(sum(sizes), 2, seed=7)[0]
    start = sample_offset(sizes, rank)
    local = full[start : start + sizes[rank]].clone().requires_grad_(True)
    gathered = all_gather_with_grad(local, group)
    (gathered * gather_weights(sum(sizes), rank)).sum().backward()
    labels = torch.arange(start, start + sizes[rank]) * 10
    known = gather_sizes(local, group)
    return {
        "rank": get_rank(group),
        "world_size": get_world_size(group),
        "distributed": is_distributed(group),
        "global_world_size": get_world_size(),
        "sizes": torch.tensor(known),
        "offset": local_row_offset(local, group),
        "gathered": gathered.detach(),
        "grad": local.grad,
        "gathered_with_sizes": all_gather_with_grad(local, group, sizes=known).detach(),
        "labels": all_gather_no_grad(labels, group),
        "labels_with_sizes": all_gather_no_grad(labels, group, sizes=known),
        "labels_requires_grad": all_gather_no_grad(local, group).requires_grad,
        "summed": sum_over_ranks(torch.tensor([rank, 1]), group),
    }


def _error_message(call: Callable[[], Any]) -> str:
    try:
        call()
    except ValueError as error:
        return str(error)
    return "no error"


def case_shape_errors(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    trailing = torch.zeros(2, 3 + rank)
    rank_of_tensor = torch.zeros((2, 3) if rank == 0 else (2, 3, 1))
    wrong_sizes = [1] * world_size
    dtype = torch.zeros(2, 3, dtype=torch.float32 if rank == 0 else torch.float64)
    return {
        "dtype": _error_message(lambda: all_gather_with_grad(dtype, group)),
        "trailing": _error_message(lambda: all_gather_with_grad(trailing, group)),
        "ndim": _error_message(lambda: gather_sizes(rank_of_tensor, group)),
        "sizes": _error_message(lambda: all_gather_no_grad(trailing, group, sizes=wrong_sizes)),
    }


def supcon_rows_vs_columns(
    anchors: torch.Tensor,
    columns: torch.Tensor,
    anchor_labels: torch.Tensor,
    column_labels: torch.Tensor,
    offset: int,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon ("out") per anchor, anchors = rows ``offset ...`` of the column set.

    Written from the formula, independently of the library, to check the helpers'
    exactness contract on its own.
    """
    anchors, columns = F.normalize(anchors, dim=-1), F.normalize(columns, dim=-1)
    logits = anchors @ columns.T / temperature
    rows = torch.arange(anchors.shape[0])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, offset + rows] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    positive = (anchor_labels[:, None] == column_labels[None, :]) & ~is_self
    num_positives = positive.sum(1)
    valid = num_positives > 0
    positive_sum = torch.where(positive, logits, 0.0).sum(1)
    loss = -(positive_sum - num_positives * logits.logsumexp(1)) / num_positives.clamp(min=1)
    return torch.where(valid, loss, 0.0), valid


def reduce_like_contract(
    loss: torch.Tensor,
    valid: torch.Tensor,
    reduction: str,
    world_size: int,
    group: Group = None,
) -> torch.Tensor:
    """Rank r's share of the global loss, normalised so that DDP's average is exact."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return world_size * loss.sum()
    num_valid = valid.sum()
    if world_size > 1:
        dist.all_reduce(num_valid, group=group)
    return world_size * loss.sum() / num_valid


def contract_inputs(layout: str, world_size: int, views: int) -> tuple[torch.Tensor, ...]:
    sizes = LAYOUTS[layout][world_size]
    embeddings, labels = global_batch(sum(sizes), views, seed=11)
    return embeddings.flatten(0, 1), labels.repeat_interleave(views)


def case_contract(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    results: dict[str, Any] = {}
    views = 2
    for layout in LAYOUTS:
        sizes = LAYOUTS[layout][world_size]
        rows, labels = contract_inputs(layout, world_size, views)
        start = sample_offset(sizes, rank) * views
        stop = start + sizes[rank] * views
        for reduction in REDUCTIONS:
            local = rows[start:stop].clone().requires_grad_(True)
            columns = all_gather_with_grad(local, group)
            column_labels = all_gather_no_grad(labels[start:stop], group)
            offset = local_row_offset(local, group)
            loss, valid = supcon_rows_vs_columns(
                local, columns, labels[start:stop], column_labels, offset
            )
            value = reduce_like_contract(loss, valid, reduction, world_size, group)
            value.sum().backward()
            results[f"{layout}-{reduction}"] = {
                "loss": value.detach(),
                "grad": local.grad,
                "offset": offset,
            }
    return results


def ddp_model() -> torch.nn.Module:
    """The same float64 linear embedding on every rank (and in the parent)."""
    gen = torch.Generator().manual_seed(5)
    model = torch.nn.Linear(3, DIM, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(DIM, 3, generator=gen, dtype=torch.float64))
        model.bias.copy_(torch.randn(DIM, generator=gen, dtype=torch.float64))
    return model


def ddp_inputs(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = LAYOUTS["uneven"][world_size]
    gen = torch.Generator().manual_seed(23)
    features = torch.randn(sum(sizes), 3, generator=gen, dtype=torch.float64)
    return features, torch.randint(0, 3, (sum(sizes),), generator=gen)


# DDP's constructor imports torch._dynamo (about 1.5 s of CPU per process), so the
# end-to-end DDP step runs on 2 ranks only (the subgroup); the loss cases cover 3 ranks.
DDP_WORLD_SIZES = (2,)


def case_ddp(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    """One DDP step with uneven local batches: the averaged parameter gradients."""
    if world_size not in DDP_WORLD_SIZES:
        return {}
    sizes = LAYOUTS["uneven"][world_size]
    features, labels = ddp_inputs(world_size)
    start = sample_offset(sizes, rank)
    local = slice(start, start + sizes[rank])
    model = torch.nn.parallel.DistributedDataParallel(ddp_model(), process_group=group)
    embeddings = model(features[local])
    columns = all_gather_with_grad(embeddings, group)
    loss, valid = supcon_rows_vs_columns(
        embeddings, columns, labels[local], all_gather_no_grad(labels[local], group), start
    )
    reduce_like_contract(loss, valid, "mean", world_size, group).backward()
    return {name: p.grad for name, p in model.module.named_parameters()}


CASES: dict[str, Callable[[int, int, Group], dict[str, Any]]] = {
    "gather": case_gather,
    "shape_errors": case_shape_errors,
    "contract": case_contract,
    "ddp": case_ddp,
}


def run_all_cases(rank: int, launch_world_size: int) -> dict[int, dict[str, Any]]:
    """Every case on 3 ranks (world group), then on ranks 0 and 1 (a subgroup)."""
    # These modules import this one.
    from _dist_header_cases import case_header_errors, case_skipped_gather
    from _dist_loss_cases import case_backend_refusal, case_losses
    from _dist_two_tower_cases import case_two_tower

    CASES["losses"] = case_losses
    CASES["backend_refusal"] = case_backend_refusal
    CASES["two_tower"] = case_two_tower
    CASES["header_errors"] = case_header_errors
    CASES["skipped_gather"] = case_skipped_gather  # last: it leaves a timed-out group
    assert launch_world_size == LAUNCH_WORLD_SIZE
    subgroup = dist.new_group(list(range(min(WORLD_SIZES))))  # every rank must call it
    results: dict[int, dict[str, Any]] = {}
    for world_size in sorted(WORLD_SIZES, reverse=True):
        if rank >= world_size:
            continue
        group = None if world_size == launch_world_size else subgroup
        results[world_size] = {}
        for name, case in CASES.items():
            try:
                results[world_size][name] = case(rank, world_size, group)
            except Exception:
                results[world_size][name] = {"error": traceback.format_exc()}
    return results
