"""``torch.nn.Module`` faces of the losses: they store options and delegate.

The maths and its documentation live once, in :mod:`nodulebench.losses.functional`.
Each pairwise module records in ``num_excluded_anchors`` how many anchors its last call
left out (anchors without a positive, or without a negative for triplets).
"""

from __future__ import annotations

import torch

from nodulebench.losses import _options
from nodulebench.losses import functional as LF
from nodulebench.losses._inputs import ReducedLoss
from nodulebench.losses.registry import register_loss

__all__ = [
    "ContrastiveLoss",
    "CrossEntropyLoss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "PairwiseLoss",
    "SupConLoss",
    "TripletMarginLoss",
]


class PairwiseLoss(torch.nn.Module):
    """Base of the pairwise losses: records how many anchors the last call excluded.

    Attributes:
        num_excluded_anchors: anchors of the last call that had no positive (or, for
            triplets, no negative) and so were left out of the reduction; 0 before any call.
    """

    num_excluded_anchors: int

    def __init__(self) -> None:
        super().__init__()
        self.num_excluded_anchors = 0

    def _record(self, result: ReducedLoss) -> torch.Tensor:
        self.num_excluded_anchors = result.num_excluded_anchors
        return result.loss


@register_loss("supcon", consumes="embeddings", requires_labels=False,
               citation="Khosla et al., Supervised Contrastive Learning, NeurIPS 2020")
class SupConLoss(PairwiseLoss):
    """Supervised contrastive loss; see :func:`~nodulebench.losses.functional.supcon_loss`.

    Args:
        temperature: ``tau > 0``.
        variant: ``"out"`` (default, recommended by the paper) or ``"in"``.
        base_temperature: if set, the loss is scaled by ``temperature / base_temperature``.
        normalize: L2-normalize embeddings first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"`` (see
            :mod:`nodulebench.kernels.dispatch`).

    Example:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> loss = loss_fn(torch.randn(8, 2, 16), torch.tensor([0, 1] * 4))
    """

    def __init__(
        self,
        temperature: float = 0.1,
        variant: str = "out",
        base_temperature: float | None = None,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _options.check_supcon_options(temperature, variant, base_temperature, reduction)
        self.temperature = temperature
        self.variant = variant
        self.base_temperature = base_temperature
        self.normalize = normalize
        self.reduction = reduction
        self.backend = _options.check_backend(backend)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``embeddings`` ``(B, D)`` or ``(B, V, D)`` with ``labels`` ``(B,)`` or None."""
        return self._record(LF._supcon(
            embeddings, labels, temperature=self.temperature, variant=self.variant,
            base_temperature=self.base_temperature, normalize=self.normalize,
            reduction=self.reduction, backend=self.backend,
        ))

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return (f"temperature={self.temperature}, variant={self.variant!r}, "
                f"base_temperature={self.base_temperature}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


@register_loss("ntxent", consumes="embeddings", requires_labels=False,
               citation="Chen et al., A Simple Framework for Contrastive Learning of Visual "
                        "Representations (SimCLR), ICML 2020")
class NTXentLoss(PairwiseLoss):
    """NT-Xent (SimCLR); see :func:`~nodulebench.losses.functional.ntxent_loss`.

    Args:
        temperature: ``tau > 0`` (0.1 here; 0.5 in SimCLR / lightly, 0.07 in
            pytorch-metric-learning).
        normalize: L2-normalize embeddings first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"`` (see
            :mod:`nodulebench.kernels.dispatch`).

    Example:
        >>> loss = NTXentLoss()(torch.randn(4, 8), torch.randn(4, 8))
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _options.check_supcon_options(temperature, "out", None, reduction)
        self.temperature = temperature
        self.normalize = normalize
        self.reduction = reduction
        self.backend = _options.check_backend(backend)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of ``(B, V, D)`` views, or of two ``(B, D)`` views."""
        return self._record(LF._ntxent(view1, view2, temperature=self.temperature,
                                       normalize=self.normalize, reduction=self.reduction,
                                       backend=self.backend))

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return (f"temperature={self.temperature}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


@register_loss("contrastive", consumes="embeddings", requires_labels=True,
               citation="Hadsell, Chopra & LeCun, Dimensionality Reduction by Learning an "
                        "Invariant Mapping, CVPR 2006")
class ContrastiveLoss(PairwiseLoss):
    """Pairwise contrastive loss; see :func:`~nodulebench.losses.functional.contrastive_loss`.

    Args:
        margin: ``m >= 0``.
        normalize: L2-normalize embeddings first (off by default).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"`` (see
            :mod:`nodulebench.kernels.dispatch`).

    Example:
        >>> loss = ContrastiveLoss(margin=1.0)(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    def __init__(
        self, margin: float = 1.0, normalize: bool = False, reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _options.check_contrastive_options(margin, reduction)
        self.margin = margin
        self.normalize = normalize
        self.reduction = reduction
        self.backend = _options.check_backend(backend)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``embeddings`` ``(B, D)`` or ``(B, V, D)`` with ``labels`` ``(B,)``."""
        return self._record(LF._contrastive(embeddings, labels, margin=self.margin,
                                            normalize=self.normalize, reduction=self.reduction,
                                       backend=self.backend))

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return (f"margin={self.margin}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, backend={self.backend!r}")


@register_loss("triplet", consumes="embeddings", requires_labels=True,
               citation="Schroff et al., FaceNet, CVPR 2015; Hermans et al., In Defense of "
                        "the Triplet Loss, 2017")
class TripletMarginLoss(PairwiseLoss):
    """Triplet margin loss; see :func:`~nodulebench.losses.functional.triplet_margin_loss`.

    Args:
        margin: ``m >= 0``.
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        mining: ``"hard"``, ``"all"`` or ``"semihard"``.
        normalize: L2-normalize embeddings first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"`` (see
            :mod:`nodulebench.kernels.dispatch`).

    Example:
        >>> loss = TripletMarginLoss(mining="all")(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))
    """

    def __init__(
        self,
        margin: float = 0.2,
        distance: str = "euclidean",
        mining: str = "hard",
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _options.check_triplet_options(margin, distance, mining, reduction)
        self.margin = margin
        self.distance = distance
        self.mining = mining
        self.normalize = normalize
        self.reduction = reduction
        self.backend = _options.check_backend(backend)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``embeddings`` ``(B, D)`` or ``(B, V, D)`` with ``labels`` ``(B,)``."""
        return self._record(LF._triplet(
            embeddings, labels, margin=self.margin, distance=self.distance, mining=self.mining,
            normalize=self.normalize, reduction=self.reduction, backend=self.backend,
        ))

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return (f"margin={self.margin}, distance={self.distance!r}, mining={self.mining!r}, "
                f"normalize={self.normalize}, reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


@register_loss("multi_similarity", consumes="embeddings", requires_labels=True,
               citation="Wang et al., Multi-Similarity Loss with General Pair Weighting for "
                        "Deep Metric Learning, CVPR 2019")
class MultiSimilarityLoss(PairwiseLoss):
    """Multi-similarity loss; see :func:`~nodulebench.losses.functional.multi_similarity_loss`.

    Args:
        alpha: positive scale (published 2).
        beta: negative scale (published 50).
        base: similarity margin lambda (published 0.5).
        epsilon: mining margin (published 0.1).
        normalize: L2-normalize embeddings first (cosine similarity).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"`` (see
            :mod:`nodulebench.kernels.dispatch`).

    Example:
        >>> loss = MultiSimilarityLoss()(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _options.check_multi_similarity_options(alpha, beta, base, epsilon, reduction)
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.epsilon = epsilon
        self.normalize = normalize
        self.reduction = reduction
        self.backend = _options.check_backend(backend)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``embeddings`` ``(B, D)`` or ``(B, V, D)`` with ``labels`` ``(B,)``."""
        return self._record(LF._multi_similarity(
            embeddings, labels, alpha=self.alpha, beta=self.beta, base=self.base,
            epsilon=self.epsilon, normalize=self.normalize, reduction=self.reduction,
            backend=self.backend,
        ))

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return (f"alpha={self.alpha}, beta={self.beta}, base={self.base}, "
                f"epsilon={self.epsilon}, normalize={self.normalize}, "
                f"reduction={self.reduction!r}, "
                f"backend={self.backend!r}")


@register_loss("cross_entropy", consumes="logits", requires_labels=True,
               citation="Cross-entropy (maximum likelihood); label smoothing: Szegedy et al., "
                        "CVPR 2016")
class CrossEntropyLoss(torch.nn.Module):
    """Cross-entropy on logits; see :func:`~nodulebench.losses.functional.cross_entropy_loss`.

    Args:
        label_smoothing: in ``[0, 1]``.
        weight: optional ``(C,)`` class weights (kept as a buffer, so it follows ``.to()``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> loss = CrossEntropyLoss()(torch.randn(4, 3), torch.tensor([0, 2, 1, 0]))
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        label_smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _options.check_cross_entropy_options(label_smoothing, weight, reduction)
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` ``(B, C)`` with integer ``targets`` ``(B,)``."""
        return LF.cross_entropy_loss(logits, targets, label_smoothing=self.label_smoothing,
                                     weight=self.weight, reduction=self.reduction)

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
