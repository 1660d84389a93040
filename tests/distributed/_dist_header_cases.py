"""Ranks whose loss calls disagree, and a rank that skips the gather.

In the mismatch cases rank 1 deviates from the others. Each rank records the error it
raised; the parent checks that every rank raised (the same error, naming what differs,
where the calls disagree), and that the ranks still meet in the next collective
afterwards: nobody was left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from _dist_cases import DIM, Group

from nodulebench import ClipLoss, CnCLoss, GroupDROLoss, SigLipLoss, SupConLoss
from nodulebench.distributed import gather_sizes
from nodulebench.losses import CrossBatchMemory
from nodulebench.losses import functional as LF
from nodulebench.losses.group_robust import cnc_loss, group_dro_loss

# The process-group timeout of the skipped-gather case: long enough to create the group
# under load, short enough to keep the suite fast.
SHORT_TIMEOUT_S = 3.0
# The loss's own bound on the header exchange (gather_timeout), on a default-timeout group.
GATHER_TIMEOUT_S = 1.0


def _inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(50 + rank)
    embeddings = torch.randn(3 + rank, DIM, generator=gen)
    return embeddings, torch.randint(0, 2, (3 + rank,), generator=gen)


def _raised(call: Callable[[], Any]) -> str:
    try:
        call()
    except (TypeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def mismatch_calls(rank: int, group: Group) -> dict[str, Callable[[], Any]]:
    """Name -> a collective call in which rank 1 differs from the others in one way."""
    odd = rank == 1
    z, y = _inputs(rank)
    gather: dict[str, Any] = {"gather_distributed": True, "process_group": group}
    return {
        "labels": lambda: LF.supcon_loss(z, None if odd else y, **gather),
        "temperature": lambda: LF.supcon_loss(z, y, temperature=0.2 if odd else 0.1, **gather),
        "loss": lambda: (LF.contrastive_loss if odd else LF.supcon_loss)(z, y, **gather),
        "reduction": lambda: LF.triplet_margin_loss(
            z, y, reduction="sum" if odd else "mean", **gather
        ),
        "normalize": lambda: LF.multi_similarity_loss(z, y, normalize=not odd, **gather),
        "dtype": lambda: LF.supcon_loss(z.half() if odd else z, y, **gather),
        "width": lambda: LF.contrastive_loss(torch.zeros(3, DIM + odd), y[:3], **gather),
        "views": lambda: LF.supcon_loss(z[:, None].expand(-1, 1 + odd, -1), y, **gather),
        "int_vs_float": lambda: LF.supcon_loss(z, y, temperature=1 if odd else 1.0, **gather),
        "clip_temperature": lambda: LF.clip_loss(
            z, z.flip(0), temperature=0.2 if odd else 0.1, **gather
        ),
        "two_tower_loss": lambda: (LF.siglip_loss if odd else LF.clip_loss)(z, z, **gather),
        "form": lambda: LF.contrastive_loss(z, y, form="pml" if odd else "hadsell", **gather),
        "ref_temperature": lambda: LF.supcon_loss(
            z, y, ref_emb=z, ref_labels=y, temperature=0.2 if odd else 0.1, **gather
        ),
        "ref_width": lambda: LF.supcon_loss(
            torch.ones(3, DIM + odd),
            y[:3],
            ref_emb=torch.ones(2, DIM + odd),
            ref_labels=y[:2],
            **gather,
        ),
        "memory_temperature": lambda: CrossBatchMemory(
            SupConLoss(temperature=0.2 if odd else 0.1, **gather), embedding_size=DIM, memory_size=8
        )(z, y),
        # Tensor-valued options are compared by value; presence of sets and banks too.
        "tensor_temperature": lambda: SupConLoss(
            temperature=torch.tensor(0.5 if odd else 0.25), **gather
        )(z, y),
        "clip_module_temperature": lambda: ClipLoss(temperature=0.5 if odd else 0.25, **gather)(
            z, z.flip(0)
        ),
        "siglip_bias_value": lambda: LF.siglip_loss(
            z, z, bias=torch.tensor(-5.0 if odd else -10.0), **gather
        ),
        "ref_presence": lambda: LF.supcon_loss(
            z, y, ref_emb=z if odd else None, ref_labels=y if odd else None, **gather
        ),
        "memory_presence": lambda: (
            CrossBatchMemory(SupConLoss(**gather), embedding_size=DIM, memory_size=8)
            if odd
            else SupConLoss(**gather)
        )(z, y),
        "fields": lambda: gather_sizes(z, group, agree={"b" if odd else "a": 1}),
        "long_value": lambda: gather_sizes(
            z, group, agree={"note": "x" * 40 + ("!" if odd else "?")}
        ),
        # Rank 1 (or every rank) rejects its own input: it still meets the others.
        "empty_batch": lambda: LF.supcon_loss(z[:0] if odd else z, **gather),
        "bad_labels": lambda: LF.contrastive_loss(z, y[:-1] if odd else y, **gather),
        "all_empty": lambda: LF.triplet_margin_loss(z[:0], y[:0], **gather),
        "ref_bad_width": lambda: LF.supcon_loss(
            z, y, ref_emb=z[:, : DIM - odd], ref_labels=y, **gather
        ),
        "ref_no_labels": lambda: LF.supcon_loss(
            z, y, ref_emb=z, ref_labels=None if odd else y, **gather
        ),
        "memory_width": lambda: CrossBatchMemory(
            SupConLoss(**gather), embedding_size=DIM, memory_size=8
        )(z[:, : DIM - odd], y),
        # Correct-N-Contrast and the two-tower losses check their own inputs first.
        "cnc_short_predictions": lambda: cnc_loss(z, y, y[:-1] if odd else 1 - y, **gather),
        "cnc_float_labels": lambda: CnCLoss(**gather)(z, y.double() if odd else y, 1 - y),
        "clip_towers": lambda: LF.clip_loss(z, z[:, : DIM - odd], **gather),
        "clip_temperature_value": lambda: LF.clip_loss(
            z, z.flip(0), temperature=torch.tensor(-1.0 if odd else 0.1), **gather
        ),
        "clip_module_dtype": lambda: ClipLoss(**gather)(z, z.double() if odd else z),
        "siglip_towers": lambda: LF.siglip_loss(z, z[: 3 + rank - odd], **gather),
        "siglip_bias_shape": lambda: LF.siglip_loss(
            z, z, bias=torch.zeros(2) if odd else torch.tensor(-1.0), **gather
        ),
        "siglip_module_device": lambda: SigLipLoss(**gather)(z, z.to("meta") if odd else z),
        # GroupDRO (logits z with D = 5 classes): the same exchange before its group sums.
        "dro_step_size": lambda: GroupDROLoss(step_size=0.02 if odd else 0.01, **gather)(z, y, y),
        "dro_group_weights": lambda: group_dro_loss(
            z, y, y, torch.tensor([0.4, 0.2, 0.2, 0.2]) if odd else torch.full((4,), 0.25), **gather
        ),
        "dro_groups_out_of_range": lambda: group_dro_loss(
            z, y, y + 4 * odd, torch.full((4,), 0.25), **gather
        ),
        # A functional call whose options rank 1 alone gets wrong.
        "supcon_option_value": lambda: LF.supcon_loss(
            z, y, temperature=-1.0 if odd else 0.1, **gather
        ),
        "ntxent_option_typo": lambda: LF.ntxent_loss(
            z, z.flip(0), **({"temprature": 0.1} if odd else {}), **gather
        ),
        "clip_option_value": lambda: LF.clip_loss(
            z, z.flip(0), temperature=-1.0 if odd else 0.1, **gather
        ),
        "cnc_option_value": lambda: cnc_loss(
            z, y, 1 - y, temperature=-1.0 if odd else 0.1, **gather
        ),
        "dro_option_value": lambda: group_dro_loss(
            z, y, y, torch.full((4,), 0.25), step_size=-1.0 if odd else 0.01, **gather
        ),
    }


def case_header_errors(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    results = {name: _raised(call) for name, call in mismatch_calls(rank, group).items()}
    # Every rank raised before the gather, so the next collective still pairs up.
    results["sizes_after"] = gather_sizes(torch.zeros(rank + 1, 2), group)
    return results


def case_skipped_gather(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    """Rank 1 never calls the loss: the others fail after the group's timeout.

    The loss gathers over a group created with a short timeout, the documented way to
    bound how long a rank waits for a peer that skipped the gather.
    """
    if group is not None:  # new_group needs every rank of the world: run on 3 ranks only
        return {}
    dist.barrier()  # arrive together, so creating the group cannot time out
    short = dist.new_group(timeout=timedelta(seconds=SHORT_TIMEOUT_S))
    # A group with the default (long) timeout, bounded by the loss's gather_timeout.
    bounded = dist.new_group()
    if rank == 1:
        return {"skipped": True}
    z, y = _inputs(rank)
    result: dict[str, Any] = {}
    start = time.monotonic()
    try:
        LF.supcon_loss(z, y, gather_distributed=True, process_group=short)
        result["raised"] = "no error"
    except RuntimeError as error:
        result["raised"] = f"{type(error).__name__}: {error}"
    result["waited_s"] = time.monotonic() - start
    start = time.monotonic()
    try:
        ClipLoss(gather_distributed=True, process_group=bounded, gather_timeout=GATHER_TIMEOUT_S)(
            z, z
        )
        result["timeout_raised"] = "no error"
    except TimeoutError as error:
        result["timeout_raised"] = f"{type(error).__name__}: {error}"
    result["timeout_waited_s"] = time.monotonic() - start
    return result
