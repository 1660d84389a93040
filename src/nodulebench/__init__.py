"""nodulebench: how the choice of loss decides what a classifier learns.

Synthetic lung-nodule data with known, controllable factors; cross-entropy and
contrastive losses with exact semantics and memory-efficient kernels; probes that
tell which factors a network encodes and which it uses.
"""

from __future__ import annotations

import logging

from nodulebench import distributed, evaluation, models, probing, threads
from nodulebench.data import NoduleSpec, SyntheticNodules
from nodulebench.losses import (
    ClipLoss,
    CnCLoss,
    ContrastiveLoss,
    CrossEntropyLoss,
    GroupDROLoss,
    LossInfo,
    MultiSimilarityLoss,
    NTXentLoss,
    SigLipLoss,
    SupConLoss,
    TripletMarginLoss,
    create_loss,
    get_loss_info,
    list_losses,
    register_loss,
)

__version__ = "0.1.0.dev0"

# The library logs what takes long to "nodulebench" (INFO); silent unless the application
# configures logging (e.g. logging.basicConfig(level=logging.INFO)).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    # data
    "NoduleSpec",
    "SyntheticNodules",
    # losses
    "ClipLoss",
    "CnCLoss",
    "ContrastiveLoss",
    "CrossEntropyLoss",
    "GroupDROLoss",
    "LossInfo",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "SigLipLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "create_loss",
    "get_loss_info",
    "list_losses",
    "register_loss",
    # evaluation on the spec's shifted tests: nodulebench.evaluation.evaluate
    "evaluation",
    # models: the encoders, e.g. nodulebench.models.small_cnn
    "models",
    # probing: its functions live in the namespace, e.g. nodulebench.probing.probe_factors
    "probing",
    # distributed training
    "distributed",
    # CPU threads of torch and BLAS: nodulebench.threads.set_threads
    "threads",
]
