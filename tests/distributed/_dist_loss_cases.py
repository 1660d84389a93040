"""Every pairwise loss with ``gather_distributed=True`` on each rank, and its inputs.

The parent recomputes the same loss on the concatenated batch in one process and checks
the exactness contract of :mod:`nodulebench.distributed`: the average over ranks of the
returned values is the single-process loss, and each rank's embedding gradient divided
by the world size is the single-process gradient of its rows (``"none"``: the local
per-anchor losses, whose summed backward is the gradient of the global sum).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _dist_cases import DIM, LAYOUT_REDUCTIONS, LAYOUTS, Group, sample_offset

from nodulebench.losses import functional as LF

# name -> (functional, options, needs labels). Margins are chosen so that both the
# attracting and the repelling terms are active on these small random batches.
LOSS_SPECS: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any], bool]] = {
    "supcon-out": (LF.supcon_loss, {"variant": "out"}, True),
    "supcon-in": (LF.supcon_loss, {"variant": "in", "base_temperature": 0.07}, True),
    "supcon-unlabelled": (LF.supcon_loss, {"temperature": 0.5}, False),
    "ntxent": (LF.ntxent_loss, {}, False),
    "contrastive": (LF.contrastive_loss, {"margin": 3.0}, True),
    "triplet-hard": (LF.triplet_margin_loss, {"mining": "hard", "margin": 0.5}, True),
    "triplet-hard-cosine": (
        LF.triplet_margin_loss,
        {"mining": "hard", "margin": 0.5, "distance": "cosine"},
        True,
    ),
    "triplet-all": (LF.triplet_margin_loss, {"mining": "all", "margin": 0.5}, True),
    "triplet-semihard": (LF.triplet_margin_loss, {"mining": "semihard", "margin": 0.5}, True),
    "multi-similarity": (LF.multi_similarity_loss, {"base": 0.2}, True),
}
# Backends that each loss is run with: the dense reference serves every loss, the tiled
# engine all but semi-hard mining (Triton cannot serve a subset of anchors).
LOSS_BACKENDS: dict[str, tuple[str, ...]] = {
    name: ("reference",) if name == "triplet-semihard" else ("reference", "tiled")
    for name in LOSS_SPECS
}
INPUTS = ("labels", "views")  # (B, D) with labels; (B, 3, D) multi-view


def loss_keys() -> Iterator[tuple[str, str, str, str]]:
    """(loss, backend, layout, input) of every case; unlabelled losses take views only."""
    for name, backends in LOSS_BACKENDS.items():
        needs_labels = LOSS_SPECS[name][2]
        inputs = INPUTS if needs_labels else ("views",)
        yield from itertools.product((name,), backends, sorted(LAYOUTS), inputs)


def loss_inputs(layout: str, input_kind: str, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global float64 batch of a case, identical on every rank and in the parent."""
    sizes = LAYOUTS[layout][world_size]
    seed = 100 * world_size + 10 * sorted(LAYOUTS).index(layout) + INPUTS.index(input_kind)
    gen = torch.Generator().manual_seed(seed)
    shape = (sum(sizes), DIM) if input_kind == "labels" else (sum(sizes), 3, DIM)
    embeddings = torch.randn(shape, generator=gen, dtype=torch.float64)
    return embeddings, torch.randint(0, 3, (sum(sizes),), generator=gen)


def call_loss(
    name: str,
    backend: str,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    reduction: str,
    **gather: Any,
) -> torch.Tensor:
    fn, options, needs_labels = LOSS_SPECS[name]
    if fn is LF.ntxent_loss:
        return fn(embeddings, reduction=reduction, backend=backend, **options, **gather)
    return fn(
        embeddings,
        labels if needs_labels else None,
        reduction=reduction,
        backend=backend,
        **options,
        **gather,
    )


def case_losses(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, backend, layout, input_kind in loss_keys():
        sizes = LAYOUTS[layout][world_size]
        embeddings, labels = loss_inputs(layout, input_kind, world_size)
        start = sample_offset(sizes, rank)
        local = slice(start, start + sizes[rank])
        for reduction in LAYOUT_REDUCTIONS[layout]:
            rows = embeddings[local].clone().requires_grad_(True)
            value = call_loss(
                name,
                backend,
                rows,
                labels[local],
                reduction,
                gather_distributed=True,
                process_group=group,
            )
            value.sum().backward()
            results["/".join((name, backend, layout, input_kind, reduction))] = {
                "loss": value.detach(),
                "grad": rows.grad,
            }
    return results


def case_backend_refusal(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    """Forcing Triton with gather_distributed=True fails the same way on every rank."""
    embeddings, labels = loss_inputs("even", "labels", world_size)
    try:
        LF.supcon_loss(
            embeddings[:2],
            labels[:2],
            backend="triton",
            gather_distributed=True,
            process_group=group,
        )
    except ValueError as error:
        return {"message": str(error)}
    return {"message": "no error"}
