r"""The losses: each declared once (its options), with its maths documented here.

Every pairwise loss runs the same three steps
(:func:`~nodulebench.losses._declaration.compute_pairwise`):

1. ``_inputs.prepare_embeddings`` validates ``embeddings`` ``(B, D)`` or ``(B, V, D)``
   and ``labels`` ``(B,)``, flattens the views to ``N = B * V`` rows in sample-major
   order (row ``b * V + v`` is view ``v`` of sample ``b`` and carries ``labels[b]``),
   L2-normalizes if asked and upcasts fp16/bf16 to float32. A reference set
   (``ref_emb``, ``ref_labels``) is prepared the same way and becomes the columns.
2. A per-anchor function computes, from the prepared rows ``(N, D)`` and labels
   ``(N,)``, the loss of each anchor ``(N,)`` and which anchors are valid ``(N,)`` bool.
   ``backend=`` picks who computes it (:func:`nodulebench.kernels.dispatch.run_per_anchor`):
   the dense definitions of ``nodulebench.kernels._dense`` (``"reference"``), the
   tiled engine (``"tiled"``, never an ``N x N`` matrix) or the Triton kernels
   (``"triton"``); ``"auto"`` chooses from the inputs. All return the same tensors.
3. ``_inputs.reduce_per_anchor`` applies the reduction: ``"mean"`` over valid anchors,
   ``"sum"``, or ``"none"`` (per-anchor loss of shape ``(B,)`` or ``(B, V)``, 0 for
   invalid anchors). With no valid anchor the loss is a zero still connected to the
   graph, never NaN.

Each loss's options are a frozen dataclass here (e.g. :class:`SupConOptions`): the one
place that lists them, with defaults, meaning and checks; the functional forms, the
modules, their ``repr``, the registry and the options tables are derived from it.

Notation: :math:`A(i) = \{j \ne i\}`, :math:`P(i) = \{p \in A(i): y_p = y_i\}`,
:math:`Neg(i) = \{n: y_n \ne y_i\}`. With a reference set, :math:`A(i)` is every
reference row and :math:`P(i)` those with the anchor's label (no self-pair to exclude).

Non-finite embeddings are not checked (that would force a device synchronisation on
every call): a NaN or infinite entry makes the loss NaN (with ``normalize=False`` an
infinite entry can also give ``inf``), never a finite number, so it is visible at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from nodulebench._validation import (
    check_choice,
    check_floating,
    check_in_range,
    check_integer_tensor,
    check_ndim,
    check_same_device,
)
from nodulebench.kernels._dense import SUPCON_VARIANTS, TRIPLET_MININGS
from nodulebench.kernels.dispatch import run_per_anchor, select_backend
from nodulebench.kernels.distances import DISTANCES
from nodulebench.losses._declaration import (
    PairwiseOptions,
    PerAnchor,
    check_bool,
    choice,
    compute_pairwise,
    functional_form,
    in_range,
    non_negative,
    option,
    optional,
    positive,
    temperature_value,
)
from nodulebench.losses._inputs import REDUCTIONS, PreparedEmbeddings, compute_dtype
from nodulebench.losses.two_tower import clip_loss, siglip_loss

__all__ = [
    "CONTRASTIVE_FORMS",
    "ContrastiveOptions",
    "MultiSimilarityOptions",
    "NTXentOptions",
    "SupConOptions",
    "Temperature",
    "TripletOptions",
    "clip_loss",
    "contrastive_loss",
    "cross_entropy_loss",
    "multi_similarity_loss",
    "ntxent_loss",
    "siglip_loss",
    "supcon_loss",
    "triplet_margin_loss",
]

# --------------------------------------------------------------------------- SupCon


Temperature = float | torch.Tensor
"""The type of ``temperature``, a number or a 0-dim floating tensor (learnable or not)."""

_TEMPERATURE_DOC = (
    "a 0-dim tensor may require grad (a learnable temperature); with ``log_scale`` "
    "it is CLIP's ``logit_scale``"
)
_LOG_SCALE_DOC = (
    "read ``temperature`` as CLIP's ``logit_scale`` :math:`t`: :math:`\\tau = e^{-t}`, "
    "positive for every real :math:`t` (the safe form for a learnable temperature)"
)


def check_temperature(temperature: Temperature, log_scale: bool) -> None:
    """Raise ``ValueError`` unless the temperature is positive (any real on a log-scale).

    A tensor's value is read once here (a host synchronisation): when the options are
    built, so once per module but on every call of a functional form.
    """
    if log_scale:
        finite = (
            bool(torch.isfinite(temperature))
            if isinstance(temperature, torch.Tensor)
            else math.isfinite(temperature)
        )
        if not finite:
            raise ValueError(f"temperature (a log-scale) must be finite; got {temperature!r}")
        return
    positive = (
        bool(temperature > 0)
        if isinstance(temperature, torch.Tensor)
        else math.isfinite(temperature) and temperature > 0
    )
    if not positive:
        raise ValueError(
            f"temperature must be > 0; got {temperature!r} (a learnable one "
            "stays positive as a log-scale: log_scale=True)"
        )


def effective_temperature(temperature: Temperature, log_scale: bool) -> Temperature:
    r""":math:`\tau` itself: ``temperature``, or :math:`e^{-t}` on a log-scale."""
    if not log_scale:
        return temperature
    if isinstance(temperature, torch.Tensor):
        return torch.exp(-temperature)
    return math.exp(-temperature)


@dataclass(frozen=True)
class SupConOptions(PairwiseOptions):
    """The options of :func:`supcon_loss` and :class:`~nodulebench.SupConLoss`."""

    name: ClassVar[str] = "supcon"
    citation: ClassVar[str] = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020"
    labels_required: ClassVar[bool] = False

    temperature: Temperature = option(
        0.1,
        "``tau > 0`` (0.1 here and in pytorch-metric-learning's SupConLoss, 0.07 in "
        "the SupCon reference code); " + _TEMPERATURE_DOC,
        temperature_value,
    )
    variant: str = option(
        "out",
        '``"out"`` (the paper\'s recommended :math:`L_{out}`) or ``"in"``',
        choice(SUPCON_VARIANTS),
    )
    base_temperature: float | None = option(
        None,
        "if set, each anchor's loss is multiplied by ``temperature / "
        "base_temperature`` (the reference code's convention)",
        optional(positive),
    )
    log_scale: bool = option(False, _LOG_SCALE_DOC, check_bool)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_temperature(self.temperature, self.log_scale)

    def kernel(self) -> str:
        """SupCon's per-anchor computation."""
        return "supcon"

    def per_anchor(self, prepared: PreparedEmbeddings) -> PerAnchor:
        """The kernel's per-anchor loss, rescaled by ``base_temperature`` if set."""
        tau = effective_temperature(self.temperature, self.log_scale)
        return _supcon_per_anchor(prepared, tau, self.variant, self.base_temperature, self.backend)


def _supcon_per_anchor(
    prepared: PreparedEmbeddings,
    tau: Temperature,
    variant: str,
    base_temperature: float | None,
    backend: str,
) -> PerAnchor:
    r"""SupCon's per-anchor loss at temperature ``tau``, on the chosen backend.

    A tensor temperature reaches every backend as a scale of the rows,
    :math:`z / \sqrt{\tau}`, so that :math:`s_{ij} = z_i \cdot z_j / \tau` and
    autograd carries its gradient; the kernels then run at temperature 1.
    """
    z, labels, where = prepared.kernel_inputs()
    kernel_tau = 1.0
    if isinstance(tau, torch.Tensor):
        scale = tau.to(device=z.device, dtype=z.dtype).rsqrt()
        z = z * scale
        if where["reference"] is not None:
            ref_z, ref_labels = where["reference"]
            where = {**where, "reference": (ref_z * scale, ref_labels)}
    else:
        kernel_tau = float(tau)
    if where["reference"] is None:
        z = _kernel_rows(z, prepared, backend, variant)
    loss, valid = run_per_anchor(
        "supcon", z, labels, backend=backend, **where, temperature=kernel_tau, variant=variant
    )
    if base_temperature is not None:
        loss = loss * (tau / base_temperature)
    return loss, valid, None


def _kernel_rows(
    rows: torch.Tensor, prepared: PreparedEmbeddings, backend: str, variant: str
) -> torch.Tensor:
    """The rows a SupCon backend computes on: fp16/bf16 again where Triton will serve them.

    Rows are normalized in float32; Triton's tensor-core kernels read half-precision
    embeddings directly (accumulating in float32), the other backends want float32.
    """
    input_dtype = prepared.source.dtype
    if input_dtype not in (torch.float16, torch.bfloat16) or backend not in ("auto", "triton"):
        return rows
    if backend == "auto" and rows.device.type != "cuda":
        return rows
    low = rows.to(input_dtype)
    chosen = select_backend("supcon", backend, low, variant=variant, row_range=prepared.row_range)
    return low if chosen == "triton" else rows


@functional_form(SupConOptions)
def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020); SimCLR with ``labels=None``.

    With :math:`s_{ij} = z_i \cdot z_j / \tau` over all ``N = B * V`` views,

    .. math::

        \ell^{out}_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
            \Big[ s_{ip} - \log \sum_{a \in A(i)} e^{s_{ia}} \Big], \qquad
        \ell^{in}_i = -\log \Big[ \frac{1}{|P(i)|} \sum_{p \in P(i)} e^{s_{ip}} \Big]
            + \log \sum_{a \in A(i)} e^{s_{ia}}.

    Anchors without a positive (``|P(i)| = 0``) are excluded from the mean and get 0
    with ``reduction="none"``.

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating; views share their sample's label.
        labels: ``(B,)`` integer, or ``None``: each sample its own class, so the other
            views of the same sample are the only positives (SimCLR).
        ref_emb: optional reference set ``(M, D)`` or ``(M, V', D)``: the anchors
            (``embeddings``) are compared with its rows instead of with each other
            (pytorch-metric-learning's ``ref_emb``; a memory bank). Gradients flow to both.
        ref_labels: ``(M,)`` integer labels of ``ref_emb``; with ``ref_emb``, both
            ``labels`` and ``ref_labels`` are required.
        **options: see the table below.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Raises:
        TypeError: non-floating ``embeddings``, non-integer ``labels``, an unknown option.
        ValueError: wrong shapes or an invalid option.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> print(f"{supcon_loss(z, y, temperature=0.5).item():.4f}")
        0.4302
    """
    return compute_pairwise(
        SupConOptions.for_call(embeddings, **options),
        embeddings,
        labels,
        ref_emb=ref_emb,
        ref_labels=ref_labels,
    ).loss


# --------------------------------------------------------------------------- NT-Xent


@dataclass(frozen=True)
class NTXentOptions(PairwiseOptions):
    """The options of :func:`ntxent_loss` and :class:`~nodulebench.NTXentLoss`."""

    name: ClassVar[str] = "ntxent"
    citation: ClassVar[str] = (
        "Chen et al., A Simple Framework for Contrastive Learning of "
        "Visual Representations (SimCLR), ICML 2020"
    )
    labels_required: ClassVar[bool] = False

    temperature: Temperature = option(
        0.1,
        "``tau > 0`` (0.1 here; 0.5 in SimCLR and lightly, 0.07 in "
        "pytorch-metric-learning); " + _TEMPERATURE_DOC,
        temperature_value,
    )
    log_scale: bool = option(False, _LOG_SCALE_DOC, check_bool)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_temperature(self.temperature, self.log_scale)

    def kernel(self) -> str:
        """NT-Xent is SupCon ``"out"`` with each sample its own class."""
        return "supcon"

    def per_anchor(self, prepared: PreparedEmbeddings) -> PerAnchor:
        """SupCon ``"out"``'s per-anchor loss."""
        tau = effective_temperature(self.temperature, self.log_scale)
        return _supcon_per_anchor(prepared, tau, "out", None, self.backend)


def _stack_views(view1: torch.Tensor, view2: torch.Tensor | None) -> torch.Tensor:
    if view2 is None:
        if not isinstance(view1, torch.Tensor) or view1.ndim != 3 or view1.shape[1] < 2:
            shape = tuple(view1.shape) if isinstance(view1, torch.Tensor) else type(view1)
            raise ValueError(
                "embeddings must have shape (B, V, D) with V >= 2, or pass two (B, D) "
                f"views; got shape {shape}"
            )
        return view1
    if (
        isinstance(view2, torch.Tensor)
        and view2.ndim == 1
        and not (view2.is_floating_point() or view2.is_complex())
    ):
        raise TypeError(
            "NT-Xent takes no labels: its positives are the other views of the same sample; "
            "pass two (B, D) views (view1, view2) or one (B, V, D) tensor, or use "
            f"supcon_loss / SupConLoss for labels; got a second argument of shape "
            f"{tuple(view2.shape)} and dtype {view2.dtype}"
        )
    for name, view in (("view1", view1), ("view2", view2)):
        if not isinstance(view, torch.Tensor) or view.ndim != 2:
            shape = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view)
            raise ValueError(f"{name} must have shape (B, D) when two views are given; got {shape}")
        check_floating(name, view)
    if view1.shape != view2.shape:
        raise ValueError(
            f"view2 must have the shape of view1 {tuple(view1.shape)}; got {tuple(view2.shape)}"
        )
    if view2.dtype != view1.dtype:
        raise TypeError(f"view2 must have view1's dtype {view1.dtype}; got {view2.dtype}")
    check_same_device("view2", view2, "view1", view1)
    return torch.stack((view1, view2), dim=1)


def reject_reference_set(given: bool) -> None:
    """Raise ``TypeError`` if a reference set was passed to NT-Xent, saying why."""
    if given:
        raise TypeError(
            "NT-Xent takes no ref_emb / ref_labels: its positives are the other views of "
            "the same sample, and a reference row is a view of no anchor's sample; for "
            "extra candidates pass labels (e.g. sample indices) to supcon_loss / SupConLoss "
            "with ref_emb and ref_labels"
        )


def ntxent_views(view1: torch.Tensor, view2: torch.Tensor | None) -> torch.Tensor:
    """The ``(B, V, D)`` views of an NT-Xent call (``view1`` itself, or both stacked)."""
    return _stack_views(view1, view2)


@functional_form(NTXentOptions)
def ntxent_loss(
    view1: torch.Tensor, view2: torch.Tensor | None = None, **options: Any
) -> torch.Tensor:
    r"""NT-Xent, the SimCLR loss (Chen et al. 2020): SupCon "out" with ``labels=None``.

    Each view's positives are the other views of the same sample; every other view in
    the batch is a negative:

    .. math::

        \ell_i = -\frac{1}{V-1} \sum_{p \in P(i)}
            \Big[ s_{ip} - \log \sum_{a \ne i} e^{s_{ia}} \Big], \quad
        s_{ij} = z_i \cdot z_j / \tau.

    It takes no reference set: ``ref_emb`` / ``ref_labels`` raise ``TypeError``, since a
    reference row is a view of no anchor's sample (SupCon with sample indices as labels
    and a reference set is the labelled form).

    Args:
        view1: ``(B, V, D)`` with ``V >= 2``, or the first view ``(B, D)``.
        view2: the second view ``(B, D)``, or ``None`` when ``view1`` holds all views.
        **options: see the table below (``reduction="none"`` gives shape ``(B, V)``).

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> b = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-0.9, -0.1]])
        >>> print(f"{ntxent_loss(a, b, temperature=0.5).item():.4f}")
        0.3348
    """
    reject_reference_set("ref_emb" in options or "ref_labels" in options)
    return compute_pairwise(
        NTXentOptions.for_call(view1, **options), ntxent_views(view1, view2), None
    ).loss


# --------------------------------------------------------------------------- Contrastive


CONTRASTIVE_FORMS: tuple[str, ...] = ("hadsell", "pml")
"""Values of ``form``: Hadsell et al.'s squared contrastive loss, or pytorch-metric-learning's."""


@dataclass(frozen=True)
class ContrastiveOptions(PairwiseOptions):
    """The options of :func:`contrastive_loss` and :class:`~nodulebench.ContrastiveLoss`."""

    name: ClassVar[str] = "contrastive"
    citation: ClassVar[str] = (
        "Hadsell, Chopra & LeCun, Dimensionality Reduction by "
        "Learning an Invariant Mapping, CVPR 2006"
    )

    margin: float = option(
        1.0,
        "``m >= 0``, the distance beyond which a negative pair "
        "costs nothing (pytorch-metric-learning's ``neg_margin``)",
        non_negative,
    )
    form: str = option(
        "hadsell",
        '``"hadsell"`` (squared hinge terms, mean over all '
        'pairs) or ``"pml"`` (pytorch-metric-learning\'s: unsquared hinge '
        "terms, mean over the non-zero ones); see above",
        choice(CONTRASTIVE_FORMS),
    )
    pos_margin: float = option(
        0.0,
        '``>= 0``, with ``form="pml"``: positive pairs cost '
        "only beyond this distance; Hadsell's form needs 0",
        non_negative,
    )
    normalize: bool = option(
        False,
        "L2-normalize each embedding first (off, as in the "
        "paper; pytorch-metric-learning normalizes: pass ``True`` "
        'with ``form="pml"``)',
        check_bool,
        kw_only=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.form == "hadsell" and self.pos_margin != 0:
            raise ValueError(
                'pos_margin must be 0 with form="hadsell" (its positive pairs '
                f"are pulled to distance 0); got {self.pos_margin!r}; "
                'pass form="pml" for a positive margin'
            )

    def kernel(self) -> str:
        """The per-anchor computation of the chosen form."""
        return "contrastive" if self.form == "hadsell" else "contrastive_pml"

    def kernel_options(self) -> Mapping[str, Any]:
        """The margins."""
        if self.form == "hadsell":
            return {"margin": self.margin}
        return {"pos_margin": self.pos_margin, "neg_margin": self.margin}


@functional_form(ContrastiveOptions)
def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Pairwise contrastive loss (Hadsell, Chopra & LeCun 2006), Euclidean distance.

    With ``form="hadsell"`` (the default),

    .. math::

        c_{ij} = \begin{cases} \tfrac12 d_{ij}^2 & y_i = y_j \\
                 \tfrac12 \max(0, m - d_{ij})^2 & y_i \ne y_j \end{cases}, \qquad
        \ell_i = \frac{1}{|A(i)|} \sum_{j \in A(i)} c_{ij},

    so the mean over anchors is the mean over all unordered pairs. Every anchor with at
    least one other row is valid (an anchor without positives still has its negatives).

    With ``form="pml"``, pytorch-metric-learning's ``ContrastiveLoss``: unsquared terms
    :math:`c^+_{ij} = \max(0, d_{ij} - m^+)` on positive pairs and
    :math:`c^-_{ij} = \max(0, m - d_{ij})` on negative pairs, and ``"mean"`` is the mean
    of the non-zero positive terms plus the mean of the non-zero negative terms (each 0
    when there is none); ``"sum"`` adds every term, ``"none"`` gives each anchor its own
    two means, added. The same inputs give different numbers in the two forms.

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating.
        labels: ``(B,)`` integer.
        ref_emb: optional reference set ``(M, D)`` or ``(M, V', D)``: the anchors
            (``embeddings``) are compared with its rows instead of with each other
            (pytorch-metric-learning's ``ref_emb``; a memory bank). Gradients flow to both.
        ref_labels: ``(M,)`` integer labels of ``ref_emb``; with ``ref_emb``, both
            ``labels`` and ``ref_labels`` are required.
        **options: see the table below.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.6, 0.0], [2.0, 0.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> print(f"{contrastive_loss(z, y, margin=1.0).item():.4f}")
        0.2015
        >>> print(f"{contrastive_loss(z, y, form='pml').item():.4f}")  # 0.95 + 0.3095
        1.2595
    """
    return compute_pairwise(
        ContrastiveOptions.for_call(embeddings, **options),
        embeddings,
        labels,
        ref_emb=ref_emb,
        ref_labels=ref_labels,
    ).loss


# --------------------------------------------------------------------------- Triplet

_TRIPLET_KERNELS = {"hard": "triplet_hard", "all": "triplet_all", "semihard": "triplet_semihard"}


@dataclass(frozen=True)
class TripletOptions(PairwiseOptions):
    """The options of :func:`triplet_margin_loss` and :class:`~nodulebench.TripletMarginLoss`."""

    name: ClassVar[str] = "triplet"
    citation: ClassVar[str] = (
        "Schroff et al., FaceNet, CVPR 2015; Hermans et al., In Defense of the Triplet Loss, 2017"
    )

    margin: float = option(0.2, "``m >= 0`` (0.2 as in FaceNet)", non_negative)
    distance: str = option(
        "euclidean", '``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``', choice(DISTANCES)
    )
    mining: str = option(
        "hard", '``"hard"``, ``"all"`` or ``"semihard"`` (see above)', choice(TRIPLET_MININGS)
    )

    def kernel(self) -> str:
        """The mining picks the kernel."""
        return _TRIPLET_KERNELS[self.mining]

    def kernel_options(self) -> Mapping[str, Any]:
        """Margin and distance."""
        return {"margin": self.margin, "distance": self.distance}


@functional_form(TripletOptions)
def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Triplet margin loss over the triplets of a batch, with batch mining.

    Every triplet is :math:`t_{ipn} = \max(0, d_{ip} - d_{in} + m)` with
    :math:`p \in P(i)`, :math:`n \in Neg(i)`. An anchor is valid iff it has at least one
    positive and one negative.

    - ``"hard"`` (Hermans et al. 2017): :math:`\ell_i = \max(0, \max_{p} d_{ip} -
      \min_{n} d_{in} + m)`; ``"mean"`` averages over valid anchors.
    - ``"all"`` (Hermans et al. 2017): ``"mean"`` is :math:`\sum t_{ipn}` divided by
      the number of triplets with :math:`t_{ipn} > 0` (over the whole batch; zero if
      there is none), ``"sum"`` is :math:`\sum t_{ipn}`, ``"none"`` gives each anchor's
      mean over its positive triplets.
    - ``"semihard"`` (Schroff et al. 2015): for each positive pair, the closest
      negative farther than the positive (if none is farther, the farthest negative);
      :math:`\ell_i` is the mean over the anchor's positive pairs.

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating.
        labels: ``(B,)`` integer.
        ref_emb: optional reference set ``(M, D)`` or ``(M, V', D)``: the anchors
            (``embeddings``) are compared with its rows instead of with each other
            (pytorch-metric-learning's ``ref_emb``; a memory bank). Gradients flow to both.
        ref_labels: ``(M,)`` integer labels of ``ref_emb``; with ``ref_emb``, both
            ``labels`` and ``ref_labels`` are required.
        **options: see the table below.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> z = torch.tensor([[0.0], [1.0], [1.5], [3.0]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> print(f"{triplet_margin_loss(z, y, normalize=False, mining='all').item():.4f}")
        0.7000
    """
    return compute_pairwise(
        TripletOptions.for_call(embeddings, **options),
        embeddings,
        labels,
        ref_emb=ref_emb,
        ref_labels=ref_labels,
    ).loss


# --------------------------------------------------------------------------- Multi-similarity


@dataclass(frozen=True)
class MultiSimilarityOptions(PairwiseOptions):
    """The options of :func:`multi_similarity_loss` and its module."""

    name: ClassVar[str] = "multi_similarity"
    citation: ClassVar[str] = (
        "Wang et al., Multi-Similarity Loss with General Pair "
        "Weighting for Deep Metric Learning, CVPR 2019"
    )

    alpha: float = option(2.0, "positive scale ``> 0`` (published 2)", positive)
    beta: float = option(50.0, "negative scale ``> 0`` (published 50)", positive)
    base: float = option(
        0.5,
        r"the similarity margin :math:`\lambda` in ``[-1, 1]`` "
        "(published 0.5)",
        in_range(-1.0, 1.0),
    )
    epsilon: float = option(0.1, "mining margin ``>= 0`` (published 0.1)", non_negative)
    normalize: bool = option(
        True,
        "L2-normalize first, so that ``S`` is the cosine "
        "similarity; with ``False`` ``S`` is the raw dot product",
        check_bool,
        kw_only=True,
    )

    def kernel(self) -> str:
        """The multi-similarity loss with its mining."""
        return "multi_similarity"

    def kernel_options(self) -> Mapping[str, Any]:
        """The four scalars."""
        return {"alpha": self.alpha, "beta": self.beta, "base": self.base, "epsilon": self.epsilon}


@functional_form(MultiSimilarityOptions)
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Multi-similarity loss with its pair mining (Wang et al. 2019).

    With the similarity :math:`S_{ij} = z_i \cdot z_j` (cosine for normalized rows),
    positive :math:`p` is kept if :math:`S_{ip} - \epsilon < \max_{n} S_{in}` and
    negative :math:`n` if :math:`S_{in} + \epsilon > \min_{p} S_{ip}`; then

    .. math::

        \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{\text{kept } p}
            e^{-\alpha (S_{ip} - \lambda)}\Big)
          + \frac{1}{\beta} \log\Big(1 + \sum_{\text{kept } n}
            e^{\beta (S_{in} - \lambda)}\Big).

    An anchor is valid iff it has a positive (one with no kept pair contributes 0).

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating.
        labels: ``(B,)`` integer.
        ref_emb: optional reference set ``(M, D)`` or ``(M, V', D)``: the anchors
            (``embeddings``) are compared with its rows instead of with each other
            (pytorch-metric-learning's ``ref_emb``; a memory bank). Gradients flow to both.
        ref_labels: ``(M,)`` integer labels of ``ref_emb``; with ``ref_emb``, both
            ``labels`` and ``ref_labels`` are required.
        **options: see the table below.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> print(f"{multi_similarity_loss(z, y).item():.4f}")
        0.3394
    """
    return compute_pairwise(
        MultiSimilarityOptions.for_call(embeddings, **options),
        embeddings,
        labels,
        ref_emb=ref_emb,
        ref_labels=ref_labels,
    ).loss


# --------------------------------------------------------------------------- Cross-entropy


def check_cross_entropy_options(
    label_smoothing: float, weight: torch.Tensor | None, reduction: str
) -> None:
    """Raise on an invalid cross-entropy option (see :func:`cross_entropy_loss`)."""
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    if weight is not None:
        check_ndim("weight", weight, (1,), "(C,)")
        check_floating("weight", weight)
        # Read on the host (one synchronisation): a negative weight gives a loss that
        # can reach -inf, and a zero total weight a NaN mean.
        if weight.device.type != "meta" and not torch.compiler.is_compiling():
            finite = bool(torch.isfinite(weight).all())
            low = float(weight.min()) if weight.numel() else 0.0
            if not finite or low < 0 or (weight.numel() and float(weight.sum()) <= 0):
                raise ValueError(
                    "weight must hold finite class weights >= 0, not all 0; got values in "
                    f"[{low}, {float(weight.max()) if weight.numel() else 0.0}]"
                )
    check_choice("reduction", reduction, REDUCTIONS)


def cross_entropy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy on logits, validated, delegating to PyTorch.

    .. math::

        \ell_b = -\sum_c w_c\, q_{bc} \log \operatorname{softmax}(x_b)_c, \qquad
        q_{bc} = (1 - \varepsilon)\, [c = y_b] + \varepsilon / C,

    and ``"mean"`` divides by :math:`\sum_b w_{y_b}` (PyTorch's convention).

    Args:
        logits: ``(B, C)`` floating.
        targets: ``(B,)`` integer class indices in ``[0, C)``.
        label_smoothing: :math:`\varepsilon` in ``[0, 1]``.
        weight: optional ``(C,)`` floating class weights.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, float32 for fp16/bf16 logits, the logits' dtype otherwise.

    Raises:
        TypeError: non-tensor inputs, non-floating ``logits`` or ``weight``,
            non-integer ``targets``.
        ValueError: an empty batch (as every loss), wrong shapes, ``targets`` or
            ``weight`` on another device than ``logits``, targets outside ``[0, C)``,
            negative, non-finite or all-zero class weights, an invalid option.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
        >>> print(f"{cross_entropy_loss(logits, torch.tensor([0, 2])).item():.4f}")
        0.2395
    """
    check_ndim("logits", logits, (2,), "(B, C)")
    check_floating("logits", logits)
    check_ndim("targets", targets, (1,), "(B,)")
    check_integer_tensor("targets", targets)
    batch, num_classes = logits.shape
    if logits.numel() == 0:
        raise ValueError(
            "logits must hold at least one sample and one class (B, C >= 1); got shape "
            f"{tuple(logits.shape)}"
        )
    if targets.shape[0] != batch:
        raise ValueError(
            f"targets must have shape (B,) = ({batch},) to match logits of shape "
            f"{tuple(logits.shape)}; got shape {tuple(targets.shape)}"
        )
    check_same_device("targets", targets, "logits", logits)
    low, high = int(targets.min().item()), int(targets.max().item())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"targets must lie in [0, {num_classes}) for logits with "
            f"C = {num_classes} classes; got values in [{low}, {high}]"
        )
    check_cross_entropy_options(label_smoothing, weight, reduction)
    dtype = compute_dtype(logits.dtype)
    if weight is not None:
        if weight.shape[0] != num_classes:
            raise ValueError(
                f"weight must have shape (C,) = ({num_classes},); got shape {tuple(weight.shape)}"
            )
        check_same_device("weight", weight, "logits", logits)
        weight = weight.to(dtype=dtype)
    return F.cross_entropy(
        logits.to(dtype),
        targets.to(dtype=torch.int64),
        weight=weight,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
