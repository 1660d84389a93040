"""The two-tower losses with gather_distributed=True equal the single-process loss."""

from __future__ import annotations

import pytest
import torch
from _dist_cases import LAYOUTS, REDUCTIONS, WORLD_SIZES
from _dist_two_tower_cases import (
    TWO_TOWER_BACKENDS,
    TWO_TOWER_LOSSES,
    call_two_tower,
    scalar_leaves,
    two_tower_inputs,
    two_tower_keys,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize(
    ("name", "backend", "layout", "reduction"),
    list(two_tower_keys()),
    ids=["-".join(key) for key in two_tower_keys()],
)
def test_loss_and_gradients_equal_single_process(
    distributed_results,
    world_size: int,
    name: str,
    backend: str,
    layout: str,
    reduction: str,
) -> None:
    image, text = two_tower_inputs(layout, world_size)
    image, text = image.requires_grad_(True), text.requires_grad_(True)
    scalars = scalar_leaves(name)
    single = call_two_tower(name, backend, image, text, reduction, scalars)
    single.sum().backward()
    assert image.grad is not None and text.grad is not None
    assert image.grad.abs().sum() > 0, "vacuous case: the loss has no gradient"
    results = [
        r["/".join((name, backend, layout, reduction))]
        for r in distributed_results(world_size, "two_tower")
    ]
    if reduction == "none":
        torch.testing.assert_close(
            torch.cat([r["loss"] for r in results]), single.detach(), **TIGHT
        )
    else:
        average = sum(r["loss"] for r in results) / world_size
        torch.testing.assert_close(average, single.detach(), **TIGHT)
    # DDP averages gradients over ranks; the "none" outputs are summed here instead.
    scale = 1 if reduction == "none" else world_size
    sizes = LAYOUTS[layout][world_size]
    assert [r["image_grad"].shape[0] for r in results] == list(sizes)
    torch.testing.assert_close(
        torch.cat([r["image_grad"] for r in results]) / scale, image.grad, **TIGHT
    )
    torch.testing.assert_close(
        torch.cat([r["text_grad"] for r in results]) / scale, text.grad, **TIGHT
    )
    for key, leaf in scalars.items():
        assert leaf.grad is not None and leaf.grad != 0
        torch.testing.assert_close(
            sum(r[f"{key}_grad"] for r in results) / scale, leaf.grad, **TIGHT
        )


@pytest.mark.parametrize("name", TWO_TOWER_LOSSES)
@pytest.mark.parametrize("backend", TWO_TOWER_BACKENDS)
def test_gather_without_process_group_is_the_plain_loss(name: str, backend: str) -> None:
    image, text = two_tower_inputs("uneven", 2)
    for reduction in REDUCTIONS:
        plain = call_two_tower(name, backend, image, text, reduction, scalar_leaves(name))
        gathered = call_two_tower(
            name, backend, image, text, reduction, scalar_leaves(name), gather_distributed=True
        )
        torch.testing.assert_close(gathered, plain, rtol=0, atol=0)
