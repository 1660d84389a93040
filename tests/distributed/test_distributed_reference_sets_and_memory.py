"""Reference sets and the cross-batch memory with gather_distributed=True.

A reference set: each rank's anchors meet every rank's reference rows, and the exactness
contract of :mod:`nodulebench.distributed` holds for both tensors, on the reference and
the tiled backends (the average over ranks
of the losses is the single-process loss; each rank's gradients of its anchors and of its
reference rows, divided by the world size, are the single-process gradients of those
rows). The memory: every rank enqueues the gathered batch once, so all ranks hold the
same memory, and the next step's loss is exact too.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from nodulebench import SupConLoss
from nodulebench.losses import CrossBatchMemory
from nodulebench.losses import functional as LF

WORLD_SIZE = 2
ANCHORS = (3, 2)  # anchors per rank (uneven)
REFS = (2, 4)  # reference rows per rank (uneven)
LOSSES = {
    "supcon": (LF.supcon_loss, {"temperature": 0.5}),
    "contrastive": (LF.contrastive_loss, {"margin": 3.0}),
    "triplet-all": (LF.triplet_margin_loss, {"mining": "all", "margin": 0.5}),
    "multi-similarity": (LF.multi_similarity_loss, {"base": 0.0, "beta": 10.0}),
}
BACKENDS = ("reference", "tiled")


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(42)
    embeddings = torch.randn(sum(ANCHORS), 2, 3, generator=gen, dtype=torch.float64)
    ref_emb = torch.randn(sum(REFS), 3, generator=gen, dtype=torch.float64)
    return (embeddings, torch.tensor([0, 1, 0, 2, 1]), ref_emb, torch.tensor([1, 0, 2, 0, 1, 1]))


def rank_slice(sizes: tuple[int, ...], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def run_ranks(rank: int, world_size: int) -> dict[str, Any]:
    embeddings, labels, ref_emb, ref_labels = inputs()
    mine, my_refs = rank_slice(ANCHORS, rank), rank_slice(REFS, rank)
    results = {}
    for (name, (fn, options)), backend in itertools.product(LOSSES.items(), BACKENDS):
        rows = embeddings[mine].clone().requires_grad_(True)
        refs = ref_emb[my_refs].clone().requires_grad_(True)
        loss = fn(
            rows,
            labels[mine],
            ref_emb=refs,
            ref_labels=ref_labels[my_refs],
            gather_distributed=True,
            backend=backend,
            **options,
        )
        loss.backward()
        results[f"{name}/{backend}"] = {
            "loss": loss.detach(),
            "grad": rows.grad,
            "ref_grad": refs.grad,
        }
    memory = CrossBatchMemory(
        SupConLoss(gather_distributed=True), embedding_size=3, memory_size=16, dtype=torch.float64
    )
    memory(embeddings[mine], labels[mine])  # fills the memory with the gathered batch
    rows = ref_emb[my_refs].clone().requires_grad_(True)
    loss = memory(rows, ref_labels[my_refs])
    loss.backward()
    results["memory"] = {
        "loss": loss.detach(),
        "grad": rows.grad,
        "rows": memory.embeddings[: memory.filled].clone(),
        "labels": memory.labels[: memory.filled].clone(),
    }
    return results


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    from _dist_launch import run_distributed

    workdir: Path = tmp_path_factory.mktemp("reference_sets")
    return run_distributed(run_ranks, WORLD_SIZE, workdir)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_both_gradients_equal_single_process(
    per_rank: list[dict[str, Any]], name: str, backend: str
) -> None:
    fn, options = LOSSES[name]
    embeddings, labels, ref_emb, ref_labels = inputs()
    embeddings.requires_grad_(True)
    ref_emb.requires_grad_(True)
    single = fn(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels, **options)
    single.backward()
    assert embeddings.grad is not None and ref_emb.grad is not None
    assert ref_emb.grad.abs().sum() > 0, "vacuous case: no gradient reaches the reference"
    results = [r[f"{name}/{backend}"] for r in per_rank]
    tight = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(
        sum(r["loss"] for r in results) / WORLD_SIZE, single.detach(), **tight
    )
    torch.testing.assert_close(
        torch.cat([r["grad"] for r in results]) / WORLD_SIZE, embeddings.grad, **tight
    )
    torch.testing.assert_close(
        torch.cat([r["ref_grad"] for r in results]) / WORLD_SIZE, ref_emb.grad, **tight
    )


def test_memory_holds_the_gathered_batches_and_its_loss_is_exact(
    per_rank: list[dict[str, Any]],
) -> None:
    embeddings, labels, ref_emb, ref_labels = inputs()
    unit = torch.nn.functional.normalize
    first = unit(embeddings.reshape(-1, 3), dim=1)
    second = unit(ref_emb, dim=1)
    for result in per_rank:
        memory = result["memory"]
        torch.testing.assert_close(memory["rows"], torch.cat([first, second]))
        torch.testing.assert_close(
            memory["labels"], torch.cat([labels.repeat_interleave(2), ref_labels])
        )
    # The second step: every rank's anchors against the gathered batch and the first one.
    rows = ref_emb.clone().requires_grad_(True)
    everything = torch.cat([rows, embeddings.detach().reshape(-1, 3)])
    every_label = torch.cat([ref_labels, labels.repeat_interleave(2)])
    per_anchor = LF.supcon_loss(everything, every_label, reduction="none")[: rows.shape[0]]
    assert (per_anchor > 0).all(), "every anchor has a positive here"
    single = per_anchor.mean()
    single.backward()
    tight = {"rtol": 1e-10, "atol": 1e-12}
    results = [r["memory"] for r in per_rank]
    torch.testing.assert_close(
        sum(r["loss"] for r in results) / WORLD_SIZE, single.detach(), **tight
    )
    torch.testing.assert_close(
        torch.cat([r["grad"] for r in results]) / WORLD_SIZE, rows.grad, **tight
    )
