"""``torch.nn.Module`` faces of the losses: they hold their options and delegate.

The maths and its documentation live once, in :mod:`nodulebench.losses.functional`,
and each loss's options once, in its options class there; a module here names that
class (``Options``) and derives its constructor, ``repr`` and registry entry from it.
Each pairwise module reports in ``num_excluded_anchors`` how many anchors its last call
left out (anchors without a positive, or without a negative for triplets), and takes
``gather_distributed`` / ``process_group`` for exact losses under DDP (see
:doc:`/scaling`).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch

from nodulebench.losses import functional as LF
from nodulebench.losses._declaration import (
    PairwiseOptions,
    compute_pairwise,
    constructor_signature,
    reject_foreign_arguments,
    with_options_table,
)
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


_Loss = TypeVar("_Loss", bound="type[PairwiseLoss]")


def _registered(cls: _Loss) -> _Loss:
    """Register a pairwise loss under the name, labels rule and citation it declares."""
    declared = cls.Options
    return register_loss(
        declared.name,
        consumes="embeddings",
        requires_labels=declared.labels_required,
        citation=declared.citation,
    )(cls)


class PairwiseLoss(torch.nn.Module):
    """Base of the pairwise losses: options from a declaration, the excluded-anchor count.

    A subclass sets ``Options`` to its options class; its constructor then takes exactly
    those options (positional for the loss's own, keyword-only for the shared ones),
    validates them once, and keeps them in ``options`` (each also readable as an
    attribute, e.g. ``loss.temperature``). An option given as a
    ``torch.nn.Parameter`` (a learnable temperature) is registered as a parameter
    of the loss, so that ``loss.parameters()`` and ``state_dict`` include it.

    Attributes:
        options: the validated options (a frozen dataclass).
        num_excluded_anchors: anchors of the last call that had no positive (or, for
            triplets, no negative) and so were left out of the reduction; 0 before any
            call. With ``gather_distributed=True``, this rank's anchors. Counted on the
            device and read only when asked, so a call never waits for it.
    """

    Options: ClassVar[type[PairwiseOptions]]
    options: PairwiseOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("Options")
        if declared is not None:
            cls.__signature__ = constructor_signature(declared)  # type: ignore[attr-defined]
            cls.__doc__ = with_options_table(cls.__doc__, declared)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if args and len(args) > len(self.Options.__match_args__):
            raise TypeError(
                f"{type(self).__name__} takes at most "
                f"{len(self.Options.__match_args__)} positional options; "
                f"got {len(args)}"
            )
        positional = dict(zip(self.Options.__match_args__, args, strict=False))
        overlap = sorted(set(positional) & set(kwargs))
        if overlap:
            raise TypeError(
                f"{type(self).__name__} got option(s) {', '.join(overlap)} "
                "both by position and by keyword"
            )
        self.options = self.Options.from_kwargs(**positional, **kwargs)
        self._excluded: torch.Tensor | None = None
        for name, value in vars(self.options).items():
            if isinstance(value, torch.nn.Parameter):
                # A learnable option (a temperature) belongs to the loss's parameters.
                # (Not register_parameter: the name already reads through to the option.)
                self._parameters[name] = value

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in options.__dataclass_fields__:
            return getattr(options, name)
        return super().__getattr__(name)

    @property
    def num_excluded_anchors(self) -> int:
        """Anchors left out of the last call's reduction (see the class docstring)."""
        return 0 if self._excluded is None else int(self._excluded)

    def _record(self, result: ReducedLoss) -> torch.Tensor:
        self._excluded = result.excluded_anchors.detach()
        return result.loss

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: None = None,
        *,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``embeddings`` ``(B, D)`` or ``(B, V, D)`` with ``labels`` ``(B,)``.

        With ``ref_emb`` ``(M, D)`` or ``(M, V', D)`` and ``ref_labels`` ``(M,)``, the
        anchors are compared with the reference rows instead of with each other.
        ``indices_tuple`` (pytorch-metric-learning's third argument) is not taken: one
        raises ``TypeError`` saying what to use instead.
        """
        reject_foreign_arguments(type(self).__name__, indices_tuple=indices_tuple)
        return self._record(
            compute_pairwise(
                self.options, embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels
            )
        )

    def extra_repr(self) -> str:
        """The options that differ from their defaults, and reduction and backend."""
        return self.options.describe()


@_registered
class SupConLoss(PairwiseLoss):
    """Supervised contrastive loss; see :func:`~nodulebench.losses.functional.supcon_loss`.

    Example:
        >>> loss_fn = SupConLoss(temperature=0.5)
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> print(f"{loss_fn(z, torch.tensor([0, 0, 1, 1])).item():.4f}")
        0.4302
    """

    Options = LF.SupConOptions


@_registered
class NTXentLoss(PairwiseLoss):
    """NT-Xent (SimCLR); see :func:`~nodulebench.losses.functional.ntxent_loss`.

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> b = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-0.9, -0.1]])
        >>> print(f"{NTXentLoss(temperature=0.5)(a, b).item():.4f}")
        0.3348
    """

    Options = LF.NTXentOptions

    def forward(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor | None = None,
        indices_tuple: None = None,
        *,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``(B, V, D)`` views, or of two ``(B, D)`` views.

        A reference set (``ref_emb``, ``ref_labels``) raises ``TypeError``: NT-Xent's
        positives are the other views of the same sample, which no reference row is.
        Labels in place of ``view2`` (pytorch-metric-learning's ``NTXentLoss()(z,
        labels)``) and ``indices_tuple`` raise ``TypeError`` saying what to use instead.
        """
        reject_foreign_arguments(type(self).__name__, indices_tuple=indices_tuple)
        LF.reject_reference_set(ref_emb is not None or ref_labels is not None)
        return self._record(compute_pairwise(self.options, LF.ntxent_views(view1, view2), None))


@_registered
class ContrastiveLoss(PairwiseLoss):
    """Pairwise contrastive loss; see :func:`~nodulebench.losses.functional.contrastive_loss`.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.6, 0.0], [2.0, 0.0]])
        >>> print(f"{ContrastiveLoss(margin=1.0)(z, torch.tensor([0, 0, 1, 1])).item():.4f}")
        0.2015
    """

    Options = LF.ContrastiveOptions


@_registered
class TripletMarginLoss(PairwiseLoss):
    """Triplet margin loss; see :func:`~nodulebench.losses.functional.triplet_margin_loss`.

    Example:
        >>> loss_fn = TripletMarginLoss(mining="all", normalize=False)
        >>> z = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
        >>> print(f"{loss_fn(z, torch.tensor([0, 0, 1, 1])).item():.4f}")
        0.7000
    """

    Options = LF.TripletOptions


@_registered
class MultiSimilarityLoss(PairwiseLoss):
    """Multi-similarity loss; see :func:`~nodulebench.losses.functional.multi_similarity_loss`.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> print(f"{MultiSimilarityLoss()(z, torch.tensor([0, 0, 1, 1])).item():.4f}")
        0.3394
    """

    Options = LF.MultiSimilarityOptions


@register_loss(
    "cross_entropy",
    consumes="logits",
    requires_labels=True,
    citation="Cross-entropy (maximum likelihood); label smoothing: Szegedy et al., CVPR 2016",
)
class CrossEntropyLoss(torch.nn.Module):
    """Cross-entropy on logits; see :func:`~nodulebench.losses.functional.cross_entropy_loss`.

    Args:
        label_smoothing: in ``[0, 1]``.
        weight: optional ``(C,)`` class weights (kept as a buffer, so it follows ``.to()``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> loss = CrossEntropyLoss()(torch.zeros(4, 3), torch.tensor([0, 2, 1, 0]))
        >>> print(f"{loss.item():.4f}")  # log(3): uniform logits
        1.0986
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        label_smoothing: float = 0.0,
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        LF.check_cross_entropy_options(label_smoothing, weight, reduction)
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` ``(B, C)`` with integer ``targets`` ``(B,)``."""
        return LF.cross_entropy_loss(
            logits,
            targets,
            label_smoothing=self.label_smoothing,
            weight=self.weight,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
