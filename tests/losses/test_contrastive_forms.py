"""ContrastiveLoss's two forms: Hadsell et al.'s (default) and pytorch-metric-learning's."""

from __future__ import annotations

import pytest
import torch

from _loss_cases import make_batch, ref_contrastive, ref_contrastive_pml
from nodulebench import ContrastiveLoss, create_loss
from nodulebench.losses import functional as LF


def test_hadsell_stays_the_default() -> None:
    embeddings, labels = make_batch(0, 8, None, 4, 3)
    assert ContrastiveLoss().form == "hadsell"
    torch.testing.assert_close(
        ContrastiveLoss()(embeddings, labels), ref_contrastive(embeddings, labels)
    )


def test_pml_form_equals_pml_definition_with_its_defaults() -> None:
    # pytorch-metric-learning: ContrastiveLoss(pos_margin=0, neg_margin=1) on
    # LpDistance(normalize_embeddings=True, p=2, power=1).
    embeddings, labels = make_batch(1, 10, None, 6, 3)
    ours = create_loss("contrastive", form="pml", normalize=True)(embeddings, labels)
    want = ref_contrastive_pml(embeddings, labels, pos_margin=0.0, margin=1.0, normalize=True)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    # The two forms are different losses: a user who swaps imports sees other numbers.
    assert not torch.allclose(ours, LF.contrastive_loss(embeddings, labels, normalize=True))


def test_pml_form_without_non_zero_terms_is_a_connected_zero() -> None:
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 0.05], [5.0, 0.0]], requires_grad=True)
    loss = LF.contrastive_loss(embeddings, torch.tensor([0, 0, 1]), form="pml", pos_margin=0.1)
    loss.backward()
    assert loss.item() == 0.0 and embeddings.grad is not None


def test_pml_form_is_served_by_the_reference_backend_only() -> None:
    embeddings, labels = make_batch(2, 6, None, 3, 2)
    with pytest.raises(ValueError, match="backend='tiled' cannot compute 'contrastive_pml'"):
        LF.contrastive_loss(embeddings, labels, form="pml", backend="tiled")


def test_options_of_the_forms_are_checked() -> None:
    with pytest.raises(ValueError, match='pos_margin must be 0 with form="hadsell"'):
        ContrastiveLoss(pos_margin=0.5)
    with pytest.raises(ValueError, match="form must be one of 'hadsell', 'pml'; got 'PML'"):
        ContrastiveLoss(form="PML")
    with pytest.raises(ValueError, match="pos_margin must be a finite number >= 0"):
        ContrastiveLoss(form="pml", pos_margin=-1.0)
