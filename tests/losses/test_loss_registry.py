"""The loss registry; parametrized over ``list_losses()`` so new losses are tested too."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

import nodulebench
from nodulebench import (
    CrossEntropyLoss,
    LossInfo,
    SupConLoss,
    create_loss,
    get_loss_info,
    list_losses,
    register_loss,
)
from nodulebench.losses import registry
from nodulebench.losses.modules import PairwiseLoss

REQUIRED = {"cross_entropy", "supcon", "ntxent", "contrastive", "triplet", "multi_similarity"}


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Let a test register throwaway losses without leaking them into other tests."""
    saved = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def call_on_small_batch(name: str, loss_fn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Call a loss the way its metadata says; return the loss and the input leaf."""
    info = get_loss_info(name)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    if info.consumes in ("logits", "logits_and_groups"):
        leaf = torch.randn(6, 3, generator=gen, requires_grad=True)
        if info.consumes == "logits_and_groups":
            return loss_fn(leaf, labels, torch.tensor([0, 1, 2, 3, 0, 1])), leaf
        return loss_fn(leaf, labels), leaf
    if info.consumes == "paired_embeddings":  # two towers (B, D), here leaf[:, 0] and [:, 1]
        leaf = torch.randn(6, 2, 8, generator=gen, requires_grad=True)
        return loss_fn(leaf[:, 0], leaf[:, 1]), leaf
    leaf = torch.randn(6, 2, 8, generator=gen, requires_grad=True)
    if info.consumes == "embeddings_and_predictions":  # every anchor has a positive
        return loss_fn(leaf, labels, torch.tensor([0, 0, 1, 1, 2, 0])), leaf
    return (loss_fn(leaf, labels) if info.requires_labels else loss_fn(leaf)), leaf


def test_required_losses_are_registered() -> None:
    assert REQUIRED <= set(list_losses())


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_builds_with_defaults_runs_and_backpropagates(name: str) -> None:
    loss_fn = create_loss(name)
    assert isinstance(loss_fn, torch.nn.Module)
    loss, leaf = call_on_small_batch(name, loss_fn)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    assert bool(leaf.grad.abs().sum() > 0)
    if get_loss_info(name).consumes.startswith("embeddings"):
        assert loss_fn.num_excluded_anchors == 0


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_has_metadata_and_rejects_unknown_kwargs(name: str) -> None:
    info = get_loss_info(name)
    assert isinstance(info, LossInfo) and info.name == name
    assert info.consumes in (
        "embeddings",
        "logits",
        "paired_embeddings",
        "embeddings_and_predictions",
        "logits_and_groups",
    )
    assert isinstance(info.requires_labels, bool)
    assert info.citation
    assert "reduction" in info.accepted_kwargs
    expected = re.escape("unknown keyword argument(s) tempreature")
    with pytest.raises(TypeError, match=expected) as err:
        create_loss(name, tempreature=0.1)
    for accepted in info.accepted_kwargs:
        assert accepted in str(err.value)


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_supports_reduction_none(name: str) -> None:
    loss, leaf = call_on_small_batch(name, create_loss(name, reduction="none"))
    paired = get_loss_info(name).consumes == "paired_embeddings"
    assert loss.shape == (leaf.shape[:1] if paired else leaf.shape[:-1])


def test_create_loss_passes_options() -> None:
    loss_fn = create_loss("supcon", temperature=0.07, variant="in")
    assert isinstance(loss_fn, SupConLoss)
    assert loss_fn.temperature == 0.07 and loss_fn.variant == "in"
    with pytest.raises(ValueError, match="temperature"):
        create_loss("supcon", temperature=-1.0)


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(KeyError, match=re.escape("'supcon'")) as err:
        create_loss("supconn")
    assert "'supconn'" in str(err.value)
    with pytest.raises(KeyError, match="registered loss"):
        get_loss_info("nope")


def test_list_losses_sorted_and_fnmatch() -> None:
    names = list_losses()
    assert names == sorted(names)
    assert list_losses("*entropy") == ["cross_entropy"]
    assert list_losses("triplet") == ["triplet"]
    assert list_losses("zzz*") == []
    assert set(list_losses("*con*")) == {"contrastive", "supcon"}


def test_metadata_of_builtin_losses() -> None:
    assert get_loss_info("cross_entropy").consumes == "logits"
    assert get_loss_info("cross_entropy").factory is CrossEntropyLoss
    assert not get_loss_info("supcon").requires_labels
    assert not get_loss_info("ntxent").requires_labels
    assert get_loss_info("triplet").requires_labels
    assert "Khosla" in get_loss_info("supcon").citation
    with pytest.raises(AttributeError):
        get_loss_info("supcon").citation = "x"  # type: ignore[misc]


def test_register_new_loss_is_listed_and_created(scratch_registry: None) -> None:
    @register_loss("scratch_l2", consumes="embeddings", requires_labels=False, citation="-")
    class ScratchL2(torch.nn.Module):
        def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
            super().__init__()
            self.scale = scale

        def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
            return self.scale * embeddings.square().mean()

    assert "scratch_l2" in list_losses()
    assert get_loss_info("scratch_l2").accepted_kwargs == ("scale", "reduction")
    assert create_loss("scratch_l2", scale=2.0).scale == 2.0


def test_register_rejects_bad_entries(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match=re.escape("'supcon' is already registered")):
        register_loss("supcon", consumes="embeddings", requires_labels=True, citation="-")
    consumes = "'embeddings', 'logits', 'paired_embeddings'"
    with pytest.raises(ValueError, match=message_for("consumes", consumes, "'images'")):
        register_loss(
            "x",
            consumes="images",
            requires_labels=True,  # type: ignore[arg-type]
            citation="-",
        )
    with pytest.raises(ValueError, match="non-empty str"):
        register_loss("", consumes="logits", requires_labels=True, citation="-")
    with pytest.raises(TypeError, match="requires_labels must be a bool"):
        register_loss(
            "x",
            consumes="logits",
            requires_labels=1,  # type: ignore[arg-type]
            citation="-",
        )
    with pytest.raises(TypeError, match=re.escape("**kwargs")):

        @register_loss("swallower", consumes="logits", requires_labels=True, citation="-")
        class Swallower(torch.nn.Module):
            def __init__(self, **kwargs: object) -> None:
                super().__init__()

    assert "swallower" not in list_losses()


def message_for(*parts: str) -> str:
    return ".*".join(re.escape(p) for p in parts)


def test_public_names() -> None:
    for name in (
        "SupConLoss",
        "NTXentLoss",
        "ContrastiveLoss",
        "TripletMarginLoss",
        "MultiSimilarityLoss",
        "CrossEntropyLoss",
        "create_loss",
        "list_losses",
        "register_loss",
        "get_loss_info",
        "LossInfo",
    ):
        assert name in nodulebench.__all__ and hasattr(nodulebench, name)


def test_every_pairwise_loss_declares_a_plain_header_for_the_gather() -> None:
    # What the ranks of a gather compare: the loss's name and every option's value.
    for name in list_losses():
        module = create_loss(name)
        if not isinstance(module, PairwiseLoss):
            continue
        header = module.options.header()
        assert header["loss"] == name
        assert "process_group" not in header and "gather_distributed" not in header
        assert "gather_timeout" not in header
        assert all(v is None or isinstance(v, (bool, int, float, str)) for v in header.values())
    # A tensor option travels as itself (the exchange compares its value).
    temperature = torch.tensor(0.1, requires_grad=True)
    learnable = create_loss("supcon", temperature=temperature)
    assert learnable.options.header()["temperature"] is temperature
