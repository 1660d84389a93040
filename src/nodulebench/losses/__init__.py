"""Losses: cross-entropy and contrastive / metric losses, a registry to build them by name.

:mod:`~nodulebench.losses.functional` holds the definitions (dense, autograd),
``nodulebench.losses.modules`` the ``nn.Module`` faces (exported at the top level),
:mod:`~nodulebench.losses.registry` the name-to-loss registry,
:mod:`~nodulebench.losses.distances` the pairwise distances and
:mod:`~nodulebench.losses.memory` a cross-batch memory for any pairwise loss and
:mod:`~nodulebench.losses.group_robust` the losses built against shortcuts (GroupDRO,
Correct-N-Contrast).
"""

from __future__ import annotations

from nodulebench.losses import distances, functional
from nodulebench.losses.group_robust import CnCLoss, GroupDROLoss
from nodulebench.losses.memory import CrossBatchMemory
from nodulebench.losses.modules import (
    ContrastiveLoss,
    CrossEntropyLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
)
from nodulebench.losses.registry import (
    LossInfo,
    create_loss,
    get_loss_info,
    list_losses,
    register_loss,
)
from nodulebench.losses.two_tower import ClipLoss, SigLipLoss

__all__ = [
    "ClipLoss",
    "CnCLoss",
    "ContrastiveLoss",
    "CrossBatchMemory",
    "CrossEntropyLoss",
    "GroupDROLoss",
    "LossInfo",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "SigLipLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "create_loss",
    "distances",
    "functional",
    "get_loss_info",
    "list_losses",
    "register_loss",
]
