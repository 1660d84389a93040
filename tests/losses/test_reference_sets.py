"""Reference sets: anchors from ``embeddings``, candidates from ``ref_emb`` (PML's ``ref_emb``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from _loss_cases import (
    make_batch,
    ref_contrastive,
    ref_contrastive_pml,
    ref_multi_similarity,
    ref_supcon,
    ref_triplet,
)
from nodulebench import NTXentLoss, SupConLoss, create_loss, get_loss_info, list_losses
from nodulebench.kernels import dispatch
from nodulebench.losses import functional as LF

Case = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], dict[str, object]]
CASES: dict[str, Case] = {
    "supcon-out": (LF.supcon_loss, ref_supcon, {"temperature": 0.3}),
    "supcon-in": (
        LF.supcon_loss,
        ref_supcon,
        {"temperature": 0.5, "variant": "in", "base_temperature": 0.07},
    ),
    "contrastive": (LF.contrastive_loss, ref_contrastive, {"margin": 2.5}),
    "contrastive-pml": (
        LF.contrastive_loss,
        ref_contrastive_pml,
        {"form": "pml", "margin": 2.5, "pos_margin": 0.5},
    ),
    "triplet-hard": (LF.triplet_margin_loss, ref_triplet, {"margin": 0.5}),
    "triplet-all": (LF.triplet_margin_loss, ref_triplet, {"mining": "all", "margin": 0.5}),
    "triplet-semihard-cos": (
        LF.triplet_margin_loss,
        ref_triplet,
        {"mining": "semihard", "distance": "cosine", "margin": 0.3},
    ),
    "multi-similarity": (
        LF.multi_similarity_loss,
        ref_multi_similarity,
        {"beta": 10.0, "base": 0.0, "epsilon": 0.5},
    ),
}
# (anchor batch, anchor views, reference batch, reference views, D, classes)
SHAPES = [
    (5, None, 7, None, 4, 3),
    (4, 2, 6, 3, 3, 2),
    (1, None, 9, 2, 5, 3),
    (6, None, 1, None, 3, 2),
]
# The cases the tiled kernels serve (semi-hard mining and PML's form are dense only).
TILED_CASES = sorted(set(CASES) - {"contrastive-pml", "triplet-semihard-cos"})
BACKEND_CASES = [(name, "reference") for name in sorted(CASES)] + [
    (name, "tiled") for name in TILED_CASES
]


def case_inputs(
    seed: int, shape: tuple[int, int | None, int, int | None, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, views, ref_batch, ref_views, dim, classes = shape
    embeddings, labels = make_batch(seed, batch, views, dim, classes)
    ref_emb, ref_labels = make_batch(seed + 50, ref_batch, ref_views, dim, classes)
    return embeddings, labels, ref_emb, ref_labels


@pytest.mark.parametrize(("name", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_loop_reference(
    name: str,
    backend: str,
    shape: tuple[int, int | None, int, int | None, int, int],
    reduction: str,
) -> None:
    fn, ref, kwargs = CASES[name]
    for seed in range(2):
        embeddings, labels, ref_emb, ref_labels = case_inputs(seed, shape)
        got = fn(
            embeddings,
            labels,
            ref_emb=ref_emb,
            ref_labels=ref_labels,
            reduction=reduction,
            backend=backend,
            **kwargs,
        )
        want = ref(
            embeddings,
            labels,
            ref_emb=ref_emb,
            ref_labels=ref_labels,
            reduction=reduction,
            **kwargs,
        )
        expected_shape = embeddings.shape[:-1] if reduction == "none" else ()
        assert got.shape == want.shape == expected_shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "backend"), BACKEND_CASES)
def test_exact_gradients_to_anchors_and_reference(name: str, backend: str) -> None:
    fn, _, kwargs = CASES[name]
    embeddings, labels, ref_emb, ref_labels = case_inputs(3, (4, 2, 5, None, 3, 2))
    embeddings.requires_grad_(True)
    ref_emb.requires_grad_(True)

    def loss(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return fn(e, labels, ref_emb=r, ref_labels=ref_labels, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(loss, (embeddings, ref_emb))
    loss(embeddings, ref_emb).backward()
    assert embeddings.grad is not None and ref_emb.grad is not None
    assert ref_emb.grad.abs().sum() > 0, "vacuous case: no gradient reaches the reference"


def test_reference_rows_are_never_self_pairs() -> None:
    # The batch as its own reference set: each anchor now also meets itself, as a positive.
    embeddings, labels = make_batch(1, 6, None, 4, 2)
    own = LF.supcon_loss(embeddings, labels, temperature=0.5, reduction="none")
    with_self = LF.supcon_loss(
        embeddings, labels, ref_emb=embeddings, ref_labels=labels, temperature=0.5, reduction="none"
    )
    torch.testing.assert_close(
        with_self,
        ref_supcon(
            embeddings,
            labels,
            temperature=0.5,
            reduction="none",
            ref_emb=embeddings,
            ref_labels=labels,
        ),
    )
    assert not torch.allclose(own, with_self)


@pytest.mark.parametrize(
    "name",
    [n for n in list_losses() if n != "ntxent" and get_loss_info(n).consumes == "embeddings"],
)
def test_every_pairwise_module_takes_a_reference_set(name: str) -> None:
    embeddings, labels, ref_emb, ref_labels = case_inputs(4, (4, None, 6, None, 3, 2))
    module = create_loss(name)
    got = module(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    options = {k: v for k, v in vars(module.options).items() if k != "process_group"}
    functional = {
        "supcon": LF.supcon_loss,
        "contrastive": LF.contrastive_loss,
        "triplet": LF.triplet_margin_loss,
        "multi_similarity": LF.multi_similarity_loss,
    }[name]
    want = functional(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels, **options)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gather_without_process_group_is_the_plain_reference_loss() -> None:
    embeddings, labels, ref_emb, ref_labels = case_inputs(5, (4, None, 6, None, 3, 2))
    plain = LF.supcon_loss(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    gathered = LF.supcon_loss(
        embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels, gather_distributed=True
    )
    torch.testing.assert_close(gathered, plain, rtol=0, atol=0)


def test_auto_takes_the_tiled_kernels_past_the_crossover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counted(name: str) -> Callable[..., tuple[torch.Tensor, ...]]:
        kernel = dispatch.BACKENDS["tiled"].kernel(name)

        def run(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
            calls.append(name)
            return kernel(*args, **kwargs)

        return run

    monkeypatch.setattr(dispatch, "_TILED_KERNELS", {"supcon": counted("supcon")})
    small, small_labels = make_batch(6, 4, None, 3, 4)
    big, big_labels = make_batch(7, 256, None, 3, 4)
    bank, bank_labels = make_batch(8, 4096, None, 3, 4)
    loss = SupConLoss()(small, small_labels, ref_emb=bank[:8], ref_labels=bank_labels[:8])
    assert calls == [] and torch.isfinite(loss)
    # 256 anchors x 4096 reference rows reach SupCon's crossover (1024 x 1024).
    loss = SupConLoss()(big, big_labels, ref_emb=bank, ref_labels=bank_labels)
    assert calls == ["supcon"]
    expected = SupConLoss(backend="reference")(
        big, big_labels, ref_emb=bank, ref_labels=bank_labels
    )
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_triton_declines_reference_sets_with_its_reason() -> None:
    embeddings, labels, ref_emb, ref_labels = case_inputs(6, (4, None, 6, None, 3, 2))
    with pytest.raises(ValueError, match=r"backend='triton' cannot .* a reference set"):
        SupConLoss(backend="triton")(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels)


def test_ntxent_takes_no_reference_set_and_says_why() -> None:
    view1, _ = make_batch(1, 4, None, 3, 2)
    view2, _ = make_batch(2, 4, None, 3, 2)
    ref_emb, ref_labels = make_batch(3, 5, None, 3, 2)
    reason = r"NT-Xent takes no ref_emb / ref_labels: its positives are the other views"
    with pytest.raises(TypeError, match=reason):
        LF.ntxent_loss(view1, view2, ref_emb=ref_emb, ref_labels=ref_labels)
    with pytest.raises(TypeError, match=reason):
        LF.ntxent_loss(view1, view2, ref_emb=ref_emb)
    with pytest.raises(TypeError, match=reason):
        NTXentLoss()(view1, view2, ref_emb=ref_emb, ref_labels=ref_labels)
    with pytest.raises(TypeError, match=reason):
        NTXentLoss()(view1, view2, ref_labels=ref_labels)


def test_bad_reference_sets_get_named_errors() -> None:
    embeddings, labels, ref_emb, ref_labels = case_inputs(9, (4, None, 6, None, 3, 2))
    loss = SupConLoss()
    with pytest.raises(ValueError, match=r"ref_emb must have the embedding dimension D = 3"):
        loss(
            embeddings,
            labels,
            ref_emb=torch.randn(6, 5, dtype=torch.float64),
            ref_labels=ref_labels,
        )
    with pytest.raises(TypeError, match=r"labels were given but ref_labels is None"):
        loss(embeddings, labels, ref_emb=ref_emb)
    with pytest.raises(TypeError, match=r"ref_labels were given but labels is None"):
        loss(embeddings, None, ref_emb=ref_emb, ref_labels=ref_labels)
    with pytest.raises(TypeError, match=r"ref_labels were given without ref_emb"):
        loss(embeddings, labels, ref_labels=ref_labels)
    with pytest.raises(ValueError, match=r"ref_labels must have shape \(B,\) = \(6,\)"):
        loss(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels[:5])
    with pytest.raises(TypeError, match=r"ref_emb must have a floating-point dtype"):
        loss(embeddings, labels, ref_emb=ref_labels[:, None], ref_labels=ref_labels)
    with pytest.raises(TypeError, match=r"ref_labels must have an integer dtype"):
        loss(embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels.double())
