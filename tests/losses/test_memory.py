"""The cross-batch memory: the last K rows as extra candidates, FIFO, in state_dict."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from _loss_cases import make_batch
from nodulebench import ContrastiveLoss, CrossEntropyLoss, SupConLoss, TripletMarginLoss
from nodulebench.kernels import dispatch
from nodulebench.losses import CrossBatchMemory
from nodulebench.losses import functional as LF

SIZE = 6  # remembered rows; batches of 4 rows, so the ring wraps on the third batch


@pytest.mark.parametrize("backend", ["reference", "tiled"])
@pytest.mark.parametrize(
    ("module", "functional"),
    [
        (SupConLoss, LF.supcon_loss),
        (ContrastiveLoss, LF.contrastive_loss),
        (TripletMarginLoss, LF.triplet_margin_loss),
    ],
)
def test_equals_the_batch_against_itself_and_the_last_rows(
    backend: str,
    module: type,
    functional: Callable[..., torch.Tensor],
) -> None:
    # Every anchor of the batch meets the batch (self-pair excluded) and the last SIZE
    # rows of earlier batches, which take no gradient: the per-anchor losses of the
    # batch followed by those rows, first rows only.
    memory = CrossBatchMemory(
        module(backend=backend, reduction="none"),
        embedding_size=3,
        memory_size=SIZE,
        dtype=torch.float64,
    )
    normalize = memory.loss.normalize
    history: list[tuple[torch.Tensor, torch.Tensor]] = []
    for seed in range(4):
        embeddings, labels = make_batch(seed, 4, None, 3, 3)
        embeddings.requires_grad_(True)
        got = memory(embeddings, labels)
        got.sum().backward()
        probe = embeddings.detach().clone().requires_grad_(True)
        rows, row_labels = probe, labels
        if history:
            rows = torch.cat([probe, torch.cat([e for e, _ in history])[-SIZE:]])
            row_labels = torch.cat([labels, torch.cat([y for _, y in history])[-SIZE:]])
        want = functional(
            rows, row_labels, reduction="none", backend="reference", normalize=normalize
        )[:4]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        want.sum().backward()
        torch.testing.assert_close(embeddings.grad, probe.grad, rtol=1e-9, atol=1e-12)
        history.append((embeddings.detach(), labels))
    assert memory.filled == SIZE


def test_remembers_the_prepared_rows_of_every_view_first_in_first_out() -> None:
    memory = CrossBatchMemory(SupConLoss(), embedding_size=3, memory_size=5)
    first, first_labels = make_batch(0, 2, 2, 3, 2)  # 4 rows
    second, second_labels = make_batch(1, 1, 2, 3, 2)  # 2 rows: the ring wraps
    memory(first.float(), first_labels)
    assert memory.filled == 4
    memory(second.float(), second_labels)
    unit = torch.nn.functional.normalize
    rows = torch.cat(
        [unit(first.reshape(4, 3).float(), dim=1), unit(second.reshape(2, 3).float(), dim=1)]
    )
    labels = torch.cat([first_labels.repeat_interleave(2), second_labels.repeat_interleave(2)])
    order = [5, 1, 2, 3, 4]  # row 4 went to slot 4, row 5 overwrote slot 0
    torch.testing.assert_close(memory.embeddings, rows[order])
    torch.testing.assert_close(memory.labels, labels[order])
    assert memory.filled == 5


def test_auto_runs_a_full_memory_on_the_tiled_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # 32 anchors x (32 + 2048) columns pass batch-hard triplet's crossover (256 x 256).
    calls: list[str] = []
    tiled = dispatch.BACKENDS["tiled"].kernel("triplet_hard")

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        calls.append("triplet_hard")
        return tiled(*args, **kwargs)

    monkeypatch.setattr(dispatch, "_TILED_KERNELS", {"triplet_hard": counted})
    size = 2048
    memory = CrossBatchMemory(
        TripletMarginLoss(reduction="none"), embedding_size=3, memory_size=size, dtype=torch.float64
    )
    bank, bank_labels = make_batch(0, size, None, 3, 4)
    unit_bank = torch.nn.functional.normalize(bank, dim=1)
    memory.load_state_dict(
        {
            "embeddings": unit_bank,
            "labels": bank_labels,
            "_extra_state": {"filled": size, "position": 0},
        }
    )
    embeddings, labels = make_batch(1, 32, None, 3, 4)
    embeddings.requires_grad_(True)
    got = memory(embeddings, labels)
    assert calls == ["triplet_hard"]
    (grad,) = torch.autograd.grad(got.sum(), embeddings)
    probe = embeddings.detach().clone().requires_grad_(True)
    want = LF.triplet_margin_loss(
        torch.cat([probe, unit_bank]),
        torch.cat([labels, bank_labels]),
        reduction="none",
        backend="reference",
    )[:32]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (want_grad,) = torch.autograd.grad(want.sum(), probe)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_state_dict_resumes_the_same_memory() -> None:
    memory = CrossBatchMemory(SupConLoss(), embedding_size=3, memory_size=5)
    for seed in range(3):
        embeddings, labels = make_batch(seed, 2, None, 3, 2)
        memory(embeddings.float(), labels)
    restored = CrossBatchMemory(SupConLoss(), embedding_size=3, memory_size=5)
    restored.load_state_dict(memory.state_dict())
    assert restored.filled == memory.filled == 5
    embeddings, labels = make_batch(9, 3, None, 3, 2)
    torch.testing.assert_close(
        restored(embeddings.float(), labels), memory(embeddings.float(), labels)
    )
    torch.testing.assert_close(restored.embeddings, memory.embeddings)
    memory.reset()
    assert memory.filled == 0 and "filled=0" in repr(memory)


def test_bad_arguments_get_named_errors() -> None:
    with pytest.raises(TypeError, match="loss must be one of the pairwise losses"):
        CrossBatchMemory(CrossEntropyLoss(), embedding_size=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_size must be an int >= 1; got 0"):
        CrossBatchMemory(SupConLoss(), embedding_size=3, memory_size=0)
    with pytest.raises(TypeError, match="embedding_size must be an int"):
        CrossBatchMemory(SupConLoss(), embedding_size=3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        CrossBatchMemory(SupConLoss(), embedding_size=3, dtype=torch.int64)
    memory = CrossBatchMemory(SupConLoss(), embedding_size=3)
    with pytest.raises(ValueError, match="embeddings must have D = embedding_size = 3"):
        memory(torch.randn(4, 5), torch.arange(4))
    with pytest.raises(TypeError, match="labels must be a"):
        memory(torch.randn(4, 3), None)  # type: ignore[arg-type]


def pml_memory_supcon(
    batches: list[tuple[torch.Tensor, torch.Tensor]], memory_size: int, temperature: float
) -> list[float]:
    """pytorch-metric-learning's CrossBatchMemory semantics, written out independently.

    Its memory of ``memory_size`` rows *includes the current batch*: each step first
    enqueues the batch (FIFO, a ring), then compares every batch row with every row in
    the memory except its own copy (``do_remove_self_comparisons``), here with SupCon
    ("out", unnormalized rows), mean over anchors that have a positive.
    """
    slots: list[tuple[list[float], int] | None] = [None] * memory_size
    position, losses = 0, []
    for rows, labels in batches:
        own = []
        for row, label in zip(rows.tolist(), labels.tolist(), strict=True):
            slots[position] = (row, label)
            own.append(position)
            position = (position + 1) % memory_size
        per_anchor = []
        for (row, label), mine in zip(
            zip(rows.tolist(), labels.tolist(), strict=True), own, strict=True
        ):
            others = [s for k, s in enumerate(slots) if s is not None and k != mine]
            logits = [
                sum(a * b for a, b in zip(row, r, strict=True)) / temperature for r, _ in others
            ]
            positives = [lg for lg, (_, y) in zip(logits, others, strict=True) if y == label]
            if not positives:
                continue
            log_denominator = math.log(sum(math.exp(lg) for lg in logits))
            per_anchor.append(-sum(p - log_denominator for p in positives) / len(positives))
        losses.append(sum(per_anchor) / len(per_anchor) if per_anchor else 0.0)
    return losses


def test_pml_memory_size_is_ours_plus_one_batch() -> None:
    # Batches of B = 3 rows; PML's memory of 8 rows is ours of 8 - 3 = 5, at every step:
    # while it fills, once full, and as the ring wraps around.
    gen = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.randn(3, 4, generator=gen, dtype=torch.float64),
            torch.randint(0, 2, (3,), generator=gen),
        )
        for _ in range(7)
    ]
    expected = pml_memory_supcon(batches, memory_size=8, temperature=0.5)
    ours = CrossBatchMemory(
        SupConLoss(temperature=0.5, normalize=False),
        embedding_size=4,
        memory_size=5,
        dtype=torch.float64,
    )
    got = [float(ours(rows, labels)) for rows, labels in batches]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # With the same memory_size on both, ours has B more candidates once full.
    same_size = CrossBatchMemory(
        SupConLoss(temperature=0.5, normalize=False),
        embedding_size=4,
        memory_size=8,
        dtype=torch.float64,
    )
    other = [float(same_size(rows, labels)) for rows, labels in batches]
    assert other[-1] != pytest.approx(expected[-1], rel=1e-6)
