"""Arguments of open_clip and pytorch-metric-learning: named errors that say what to pass."""

from __future__ import annotations

import math
import re

import pytest
import torch

from nodulebench import ClipLoss, NTXentLoss, SigLipLoss, SupConLoss, TripletMarginLoss
from nodulebench.losses import functional as LF

GEN = torch.Generator().manual_seed(0)
Z = torch.randn(4, 3, generator=GEN)
LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("scale", [14.3, 100.0, torch.tensor(50.0, requires_grad=True)])
def test_an_exponentiated_logit_scale_is_named(scale: float | torch.Tensor) -> None:
    # open_clip passes model.logit_scale.exp(); as a log-scale it would give exp(100).
    for fn in (LF.clip_loss, LF.siglip_loss):
        with pytest.raises(ValueError, match=r"logit_scale is a log-scale.*math\.log\(scale\)"):
            fn(Z, Z.flip(0), logit_scale=scale)
    with pytest.raises(ValueError, match="logit_scale is a log-scale"):
        SigLipLoss(logit_scale=float(torch.as_tensor(scale).detach()))


def test_the_log_of_open_clips_scale_gives_open_clips_loss() -> None:
    # open_clip's ClipLoss: cross-entropy of s * x @ y.T both ways, s already exponentiated.
    x = torch.nn.functional.normalize(torch.randn(5, 4, generator=GEN, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5, 4, generator=GEN, dtype=torch.float64), dim=1)
    scale = torch.tensor(100.0, dtype=torch.float64)
    logits = scale * x @ y.T
    targets = torch.arange(5)
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(logits, targets)
        + torch.nn.functional.cross_entropy(logits.T, targets)
    )
    torch.testing.assert_close(LF.clip_loss(x, y, logit_scale=scale.log()), expected)
    torch.testing.assert_close(LF.clip_loss(x, y, temperature=1 / 100.0), expected)
    # The largest log-scale accepted is log(1000).
    assert torch.isfinite(LF.clip_loss(x, y, logit_scale=math.log(1000.0)))


def test_logit_bias_and_per_call_scales_are_named() -> None:
    with pytest.raises(
        TypeError, match=re.escape("logit_bias is open_clip's name for SigLIP's bias: pass bias=")
    ):
        LF.siglip_loss(Z, Z, logit_bias=-10.0)
    with pytest.raises(TypeError, match="ClipLoss holds its own logit_scale"):
        ClipLoss()(Z, Z, torch.tensor(100.0))
    with pytest.raises(TypeError, match="SigLipLoss holds its own logit_scale"):
        SigLipLoss()(Z, Z, torch.tensor(10.0), torch.tensor(-10.0))


@pytest.mark.parametrize(
    "call",
    [
        lambda: SupConLoss()(Z, LABELS, (LABELS, LABELS, LABELS)),
        lambda: TripletMarginLoss()(Z, LABELS, indices_tuple=(LABELS, LABELS, LABELS)),
        lambda: NTXentLoss()(Z, Z.flip(0), (LABELS, LABELS)),
        lambda: LF.supcon_loss(Z, LABELS, indices_tuple=(LABELS,)),
    ],
)
def test_indices_tuple_is_named(call) -> None:
    with pytest.raises(
        TypeError, match=r"got indices_tuple=: .*mining='hard', 'semihard' or 'all'"
    ):
        call()


def test_pml_reducer_and_regularizer_are_named() -> None:
    with pytest.raises(TypeError, match="reducer .*pass reduction="):
        LF.contrastive_loss(Z, LABELS, reducer=object())
    with pytest.raises(TypeError, match="embedding_regularizer"):
        SupConLoss(embedding_regularizer=object())


def test_ntxent_with_labels_is_named() -> None:
    with pytest.raises(TypeError, match="NT-Xent takes no labels.*use supcon_loss / SupConLoss"):
        NTXentLoss()(Z, LABELS)
    with pytest.raises(TypeError, match="NT-Xent takes no labels"):
        LF.ntxent_loss(Z, LABELS)
