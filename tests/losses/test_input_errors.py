"""Bad inputs get named errors: devices, empty batches, dtypes, weights, ranges, state."""

from __future__ import annotations

import re

import pytest
import torch

from nodulebench import create_loss, list_losses
from nodulebench.losses import CrossBatchMemory
from nodulebench.losses import functional as LF

GEN = torch.Generator().manual_seed(0)
Z = torch.randn(4, 2, 3, generator=GEN)
LABELS = torch.tensor([0, 0, 1, 1])


def call_with_batch(name: str, batch: int) -> torch.Tensor:
    """Loss ``name`` (registry) on a batch of ``batch`` samples of fitting inputs."""
    z = torch.randn(batch, 2, 3, generator=GEN)
    labels = torch.arange(batch) % 2
    if name == "cross_entropy":
        return create_loss(name)(z[:, 0], labels)
    if name == "group_dro":
        return create_loss(name, num_groups=2)(z[:, 0], labels, labels)
    if name in ("clip", "siglip", "ntxent"):
        return create_loss(name)(z[:, 0], z[:, 1])
    if name == "cnc":
        return create_loss(name)(z, labels, 1 - labels)
    return create_loss(name)(z, labels)


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_rejects_an_empty_batch_by_name(name: str) -> None:
    assert torch.isfinite(call_with_batch(name, 2)).all()
    with pytest.raises(ValueError, match=r"must hold at least one .*got shape \(0, "):
        call_with_batch(name, 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda meta: LF.supcon_loss(Z, meta(LABELS)),
            "labels must be on the device of embeddings (cpu); got meta",
        ),
        (
            lambda meta: LF.supcon_loss(Z, LABELS, ref_emb=Z, ref_labels=meta(LABELS)),
            "ref_labels must be on the device of ref_emb (cpu); got meta",
        ),
        (
            lambda meta: LF.cross_entropy_loss(Z[:, 0], meta(LABELS)),
            "targets must be on the device of logits (cpu); got meta",
        ),
        (
            lambda meta: LF.cross_entropy_loss(Z[:, 0], LABELS, weight=meta(torch.ones(3))),
            "weight must be on the device of logits (cpu); got meta",
        ),
        (
            lambda meta: create_loss("group_dro", num_groups=2)(Z[:, 0], LABELS, meta(LABELS)),
            "groups must be on the device of logits (cpu); got meta",
        ),
        (
            lambda meta: create_loss("cnc")(Z, meta(LABELS), LABELS),
            "labels must be on the device of embeddings (cpu); got meta",
        ),
        (
            lambda meta: LF.ntxent_loss(Z[:, 0], meta(Z[:, 1])),
            "view2 must be on the device of view1 (cpu); got meta",
        ),
    ],
)
def test_inputs_on_another_device_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call(lambda t: t.to("meta"))


def test_ntxent_views_must_be_floating_and_alike() -> None:
    with pytest.raises(TypeError, match="view2 must have a floating-point dtype; got torch.int64"):
        LF.ntxent_loss(Z[:, 0], torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="view1 must have a floating-point dtype; got torch.int32"):
        LF.ntxent_loss(torch.ones(4, 3, dtype=torch.int32), Z[:, 1])
    with pytest.raises(TypeError, match="view2 must have view1's dtype torch.float32"):
        LF.ntxent_loss(Z[:, 0], Z[:, 1].double())


def test_negative_or_degenerate_class_weights_are_named() -> None:
    logits = Z[:, 0]
    for weight in (torch.tensor([1.0, -0.5, 1.0]), torch.zeros(3), torch.tensor([1.0, 1, 1e400])):
        with pytest.raises(ValueError, match="weight must hold finite class weights >= 0"):
            LF.cross_entropy_loss(logits, LABELS, weight=weight)
        with pytest.raises(ValueError, match="weight must hold finite class weights >= 0"):
            create_loss("cross_entropy", weight=weight)
    # Zero for some classes is allowed: those samples simply do not count.
    weighted = LF.cross_entropy_loss(logits, LABELS, weight=torch.tensor([0.0, 1.0, 1.0]))
    expected = torch.nn.functional.cross_entropy(logits[2:], LABELS[2:])
    torch.testing.assert_close(weighted, expected)


@pytest.mark.parametrize("value", [2**31, 2**32, -(2**31) - 1])
def test_cnc_ids_beyond_the_packing_range_are_named(value: int) -> None:
    big = torch.tensor([0, value, 1, 1])
    with pytest.raises(ValueError, match=r"labels must lie in the int32 range"):
        create_loss("cnc")(Z, big, LABELS)
    with pytest.raises(ValueError, match=r"predictions must lie in the int32 range"):
        create_loss("cnc")(Z, LABELS, big)
    # At the edge of the range the ids still mean themselves: 2**31 - 1 is not class 0.
    edge = torch.tensor([0, 2**31 - 1, 2**31 - 1, 0])
    remapped = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(
        create_loss("cnc")(Z, edge, LABELS), create_loss("cnc")(Z, remapped, LABELS)
    )


@pytest.mark.parametrize(
    ("state", "exc", "message"),
    [
        ({"filled": 99}, TypeError, "state must be a mapping with 'filled' and 'position'"),
        ([4, 4], TypeError, "state must be a mapping"),
        ({"filled": 99, "position": 0}, ValueError, "state['filled'] must be an int in [0, 8]"),
        ({"filled": 8, "position": 8}, ValueError, "state['position'] must be an int in [0, 7]"),
        ({"filled": 3, "position": 5}, ValueError, "state['position'] must equal state['filled']"),
        ({"filled": 3.0, "position": 3}, TypeError, "state['filled'] must be an int; got float"),
    ],
)
def test_corrupt_memory_state_is_named(state: object, exc: type, message: str) -> None:
    memory = CrossBatchMemory(create_loss("supcon"), embedding_size=3, memory_size=8)
    with pytest.raises(exc, match=re.escape(message)):
        memory.set_extra_state(state)
    assert memory.filled == 0  # unchanged


def test_memory_state_round_trips_through_state_dict() -> None:
    memory = CrossBatchMemory(create_loss("supcon"), embedding_size=3, memory_size=8)
    for _ in range(3):
        memory(Z, LABELS)  # 8 rows per batch: full, written around
    restored = CrossBatchMemory(create_loss("supcon"), embedding_size=3, memory_size=8)
    restored.load_state_dict(memory.state_dict())
    assert (restored.filled, restored._position) == (memory.filled, memory._position)
    torch.testing.assert_close(restored(Z, LABELS), memory(Z, LABELS))
