"""The two-tower losses with ``gather_distributed=True`` on each rank, and their inputs.

Each rank holds its slice of the pairs; the scale (and SigLIP's bias) are leaves
replicated on every rank, as DDP replicates parameters. The parent recomputes the loss
on the whole batch in one process (see ``test_distributed_two_tower.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
from _dist_cases import DIM, LAYOUT_REDUCTIONS, LAYOUTS, Group, sample_offset

from nodulebench.losses import functional as LF

TWO_TOWER_LOSSES = ("clip", "siglip")
TWO_TOWER_BACKENDS = ("reference", "tiled")


def two_tower_keys() -> Iterator[tuple[str, str, str, str]]:
    """(loss, backend, layout, reduction) of every case."""
    for name, backend, layout in itertools.product(
        TWO_TOWER_LOSSES, TWO_TOWER_BACKENDS, sorted(LAYOUTS)
    ):
        for reduction in LAYOUT_REDUCTIONS[layout]:
            yield name, backend, layout, reduction


def two_tower_inputs(layout: str, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global float64 towers of a case, identical on every rank and in the parent."""
    sizes = LAYOUTS[layout][world_size]
    gen = torch.Generator().manual_seed(500 + 10 * world_size + sorted(LAYOUTS).index(layout))
    image = torch.randn(sum(sizes), DIM, generator=gen, dtype=torch.float64)
    return image, torch.randn(sum(sizes), DIM, generator=gen, dtype=torch.float64)


def scalar_leaves(name: str) -> dict[str, torch.Tensor]:
    """The learnable scalars of a loss, as fresh leaves (bias -1: both labels matter)."""
    values = (
        {"logit_scale": math.log(5.0)}
        if name == "clip"
        else {"logit_scale": math.log(10.0), "bias": -1.0}
    )
    return {
        key: torch.tensor(value, dtype=torch.float64, requires_grad=True)
        for key, value in values.items()
    }


def call_two_tower(
    name: str,
    backend: str,
    image: torch.Tensor,
    text: torch.Tensor,
    reduction: str,
    scalars: dict[str, torch.Tensor],
    **gather: Any,
) -> torch.Tensor:
    fn = LF.clip_loss if name == "clip" else LF.siglip_loss
    return fn(image, text, reduction=reduction, backend=backend, **scalars, **gather)


def case_two_tower(rank: int, world_size: int, group: Group) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, backend, layout, reduction in two_tower_keys():
        sizes = LAYOUTS[layout][world_size]
        image, text = two_tower_inputs(layout, world_size)
        start = sample_offset(sizes, rank)
        local = slice(start, start + sizes[rank])
        image_rows = image[local].clone().requires_grad_(True)
        text_rows = text[local].clone().requires_grad_(True)
        scalars = scalar_leaves(name)
        value = call_two_tower(
            name,
            backend,
            image_rows,
            text_rows,
            reduction,
            scalars,
            gather_distributed=True,
            process_group=group,
        )
        value.sum().backward()
        results["/".join((name, backend, layout, reduction))] = {
            "loss": value.detach(),
            "image_grad": image_rows.grad,
            "text_grad": text_rows.grad,
            **{f"{key}_grad": leaf.grad for key, leaf in scalars.items()},
        }
    return results
