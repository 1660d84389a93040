"""nodulebench.distributed: the helpers without and with a process group (gloo, 2-3 ranks)."""

from __future__ import annotations

import pytest
import torch
from _dist_cases import (
    DDP_WORLD_SIZES,
    GATHER_SIZES,
    LAYOUTS,
    REDUCTIONS,
    WORLD_SIZES,
    contract_inputs,
    ddp_inputs,
    ddp_model,
    gather_weights,
    global_batch,
    supcon_rows_vs_columns,
)

from nodulebench import distributed as nd

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def test_single_process_defaults() -> None:
    assert nd.get_rank() == 0
    assert nd.get_world_size() == 1
    assert nd.is_distributed() is False
    z = torch.randn(4, 3, requires_grad=True)
    assert nd.all_gather_with_grad(z) is z
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(nd.all_gather_no_grad(labels), labels)
    assert not nd.all_gather_no_grad(z).requires_grad
    assert nd.gather_sizes(z) == (4,)
    assert nd.local_row_offset(z) == 0
    count = torch.tensor(3)
    total = nd.sum_over_ranks(count)
    assert total.item() == 3 and total is not count


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda: nd.all_gather_with_grad([1.0]),
            TypeError,
            "tensor must be a torch.Tensor; got list",
        ),
        (
            lambda: nd.all_gather_no_grad(torch.tensor(1.0)),
            ValueError,
            "along dim 0); got shape ()",
        ),
        (lambda: nd.gather_sizes(torch.zeros((1,) * 9)), ValueError, "between 1 and 8"),
        (
            lambda: nd.get_rank(group="world"),
            TypeError,
            "group must be a torch.distributed.ProcessGroup or None; got str",
        ),
        (lambda: nd.get_world_size(group=3), TypeError, "got int"),
        (lambda: nd.sum_over_ranks(3), TypeError, "tensor must be a torch.Tensor; got int"),
    ],
)
def test_bad_input_is_named(call, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_gather_values_gradients_and_queries(distributed_results, world_size: int) -> None:
    sizes = GATHER_SIZES[world_size]
    full = global_batch(sum(sizes), 2, seed=7)[0]
    labels = torch.arange(sum(sizes)) * 10
    weight_sum = sum(gather_weights(sum(sizes), r) for r in range(world_size))
    for rank, res in enumerate(distributed_results(world_size, "gather")):
        start = sum(sizes[:rank])
        assert (res["rank"], res["world_size"], res["global_world_size"]) == (rank, world_size, 3)
        assert res["distributed"] is True
        assert res["sizes"].tolist() == list(sizes)
        assert res["offset"] == start
        torch.testing.assert_close(res["gathered"], full, rtol=0, atol=0)
        torch.testing.assert_close(res["gathered_with_sizes"], full, rtol=0, atol=0)
        assert torch.equal(res["labels"], labels)
        assert torch.equal(res["labels_with_sizes"], labels)
        assert res["labels_requires_grad"] is False
        assert res["summed"].tolist() == [sum(range(world_size)), world_size]
        # d/d(local) sum_s <gathered, w_s> = sum_s w_s restricted to this rank's rows
        torch.testing.assert_close(res["grad"], weight_sum[start : start + sizes[rank]], **TIGHT)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_mismatched_shapes_raise_on_every_rank(distributed_results, world_size: int) -> None:
    for res in distributed_results(world_size, "shape_errors"):
        assert "same shape on every rank except for the first dimension" in res["trailing"]
        assert "rank 0: (2, 3), rank 1: (2, 4)" in res["trailing"]
        assert "rank 0: (2, 3), rank 1: (2, 3, 1)" in res["ndim"]
        assert (
            "same dtype on every rank; got rank 0: torch.float32, rank 1: torch.float64"
            in res["dtype"]
        )
        assert (
            f"sizes must list every rank's first dimension ({world_size} entries" in (res["sizes"])
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_exactness_contract_with_independent_loss(
    distributed_results, world_size: int, layout: str, reduction: str
) -> None:
    """(1/W) sum_r L_r == L and grad_r / W == dL/dz_r, for a SupCon written in the test."""
    rows, labels = contract_inputs(layout, world_size, views=2)
    rows = rows.clone().requires_grad_(True)
    loss, valid = supcon_rows_vs_columns(rows, rows, labels, labels, offset=0)
    single = {"mean": loss.sum() / valid.sum(), "sum": loss.sum(), "none": loss}[reduction]
    single.sum().backward()
    assert rows.grad is not None
    per_rank = [res[f"{layout}-{reduction}"] for res in distributed_results(world_size, "contract")]
    starts = [res["offset"] for res in per_rank]
    if reduction == "none":
        torch.testing.assert_close(
            torch.cat([r["loss"] for r in per_rank]), single.detach(), **TIGHT
        )
    else:
        average = sum(r["loss"] for r in per_rank) / world_size
        torch.testing.assert_close(average, single.detach(), **TIGHT)
    # "mean"/"sum" are scaled by W so that DDP's 1/W average is exact; "none" returns the
    # local terms, whose summed backward already is the gradient of the global sum.
    scale = 1 if reduction == "none" else world_size
    for res, start in zip(per_rank, starts, strict=True):
        stop = start + res["grad"].shape[0]
        torch.testing.assert_close(res["grad"] / scale, rows.grad[start:stop], **TIGHT)


@pytest.mark.parametrize("world_size", DDP_WORLD_SIZES)
def test_ddp_step_gets_the_single_process_gradient(distributed_results, world_size: int) -> None:
    """DDP averages the parameter gradients; with the contract they are the exact ones."""
    features, labels = ddp_inputs(world_size)
    model = ddp_model()
    embeddings = model(features)
    loss, valid = supcon_rows_vs_columns(embeddings, embeddings, labels, labels, offset=0)
    (loss.sum() / valid.sum()).backward()
    for res in distributed_results(world_size, "ddp"):
        for name, param in model.named_parameters():
            torch.testing.assert_close(res[name], param.grad, **TIGHT)
