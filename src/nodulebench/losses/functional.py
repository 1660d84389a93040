r"""Dense reference definitions of the losses: readable, autograd, the ground truth.

Every pairwise loss here runs three steps:

1. ``_inputs.prepare_embeddings`` validates ``embeddings`` ``(B, D)`` or ``(B, V, D)``
   and ``labels`` ``(B,)``, flattens the views to ``N = B * V`` rows in sample-major
   order (row ``b * V + v`` is view ``v`` of sample ``b`` and carries ``labels[b]``),
   L2-normalizes if asked and upcasts fp16/bf16 to float32.
2. A per-anchor function computes, from the prepared rows ``(N, D)`` and labels
   ``(N,)``, the loss of each anchor ``(N,)`` and which anchors are valid ``(N,)`` bool.
   ``backend=`` picks who computes it (:func:`nodulebench.kernels.dispatch.run_per_anchor`):
   the dense definitions of ``nodulebench.losses._dense`` (``"reference"``), the tiled
   engine (``"tiled"``, never an ``N x N`` matrix) or the Triton kernels (``"triton"``);
   ``"auto"`` chooses from the inputs. All return the same tensors.
3. ``_inputs.reduce_per_anchor`` applies the reduction: ``"mean"`` over valid anchors,
   ``"sum"``, or ``"none"`` (per-anchor loss of shape ``(B,)`` or ``(B, V)``, 0 for
   invalid anchors). With no valid anchor the loss is a zero still connected to the
   graph, never NaN.

Notation: :math:`A(i) = \{j \ne i\}`, :math:`P(i) = \{p \in A(i): y_p = y_i\}`,
:math:`Neg(i) = \{n: y_n \ne y_i\}`.

Non-finite embeddings are not checked (that would force a device synchronisation on
every call): a NaN or infinite entry makes the loss NaN (with ``normalize=False`` an
infinite entry can also give ``inf``), never a finite number, so it is visible at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodulebench._validation import check_floating, check_integer_tensor, check_ndim
from nodulebench.kernels.dispatch import run_per_anchor, select_backend
from nodulebench.losses._inputs import (
    PreparedEmbeddings,
    ReducedLoss,
    compute_dtype,
    prepare_embeddings,
    reduce_per_anchor,
)
from nodulebench.losses._options import (
    check_backend,
    check_contrastive_options,
    check_cross_entropy_options,
    check_multi_similarity_options,
    check_supcon_options,
    check_triplet_options,
)
from nodulebench.losses.two_tower import clip_loss, siglip_loss

# Imported at run time where available so that the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
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


def _supcon(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    variant: str,
    base_temperature: float | None,
    normalize: bool,
    reduction: str,
    backend: str,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> ReducedLoss:
    check_supcon_options(temperature, variant, base_temperature, reduction)
    check_backend(backend)
    prepared = prepare_embeddings(
        embeddings, labels, normalize=normalize, labels_required=False,
        gather_distributed=gather_distributed, process_group=process_group,
        options={"loss": "supcon", "temperature": temperature, "variant": variant,
                 "base_temperature": base_temperature, "reduction": reduction,
                 "backend": backend},
    )
    loss, valid = run_per_anchor(
        "supcon", _kernel_rows(prepared, embeddings.dtype, backend, variant),
        prepared.column_labels, backend=backend, row_range=prepared.row_range,
        temperature=temperature, variant=variant,
    )
    if base_temperature is not None:
        loss = loss * (temperature / base_temperature)
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=prepared)


def _kernel_rows(
    prepared: PreparedEmbeddings, input_dtype: torch.dtype, backend: str, variant: str
) -> torch.Tensor:
    """The rows a SupCon backend computes on: fp16/bf16 again where Triton will serve them.

    Rows are normalized in float32; Triton's tensor-core kernels read half-precision
    embeddings directly (accumulating in float32), the other backends want float32.
    """
    rows = prepared.columns
    if input_dtype not in (torch.float16, torch.bfloat16) or backend not in ("auto", "triton"):
        return rows
    if backend == "auto" and rows.device.type != "cuda":
        return rows
    low = rows.to(input_dtype)
    chosen = select_backend("supcon", backend, low, variant=variant,
                            row_range=prepared.row_range)
    return low if chosen == "triton" else rows


def supcon_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    variant: str = "out",
    base_temperature: float | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020); SimCLR with ``labels=None``.

    With :math:`s_{ij} = z_i \cdot z_j / \tau` over all ``N = B * V`` views,

    .. math::

        \ell^{out}_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
            \Big[ s_{ip} - \log \sum_{a \in A(i)} e^{s_{ia}} \Big], \qquad
        \ell^{in}_i = -\log \Big[ \frac{1}{|P(i)|} \sum_{p \in P(i)} e^{s_{ip}} \Big]
            + \log \sum_{a \in A(i)} e^{s_{ia}}.

    Anchors without a positive (``|P(i)| = 0``) are excluded from the mean and get 0
    with ``reduction="none"``. With ``base_temperature`` set, :math:`\ell_i` is
    multiplied by ``temperature / base_temperature`` (the reference code's convention).

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating; views share their sample's label.
        labels: ``(B,)`` integer, or ``None``: each sample its own class, so the other
            views of the same sample are the only positives (SimCLR).
        temperature: ``tau > 0``.
        variant: ``"out"`` (the paper's recommended :math:`L_{out}`) or ``"in"``.
        base_temperature: optional ``> 0`` rescaling, see above.
        normalize: L2-normalize each view first.
        reduction: ``"mean"`` (over valid anchors), ``"sum"`` or ``"none"`` (shape
            ``(B,)`` or ``(B, V)``).
        backend: who computes the per-anchor losses: ``"auto"`` (chosen from the inputs),
            ``"reference"`` (dense), ``"tiled"`` (no ``N x N`` matrix) or ``"triton"``
            (CUDA, SupCon only); see :mod:`nodulebench.kernels.dispatch`.
        gather_distributed: compute this rank's anchors against the embeddings of
            all ranks, normalised so that DDP's gradient averaging is exact (see
            :doc:`/scaling`); without an initialised process group, the plain loss.
        process_group: the group to gather over; ``None`` means the default group.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Raises:
        TypeError: non-floating ``embeddings`` or non-integer ``labels``.
        ValueError: wrong shapes or an invalid option.

    Example:
        >>> z = torch.randn(8, 2, 16)
        >>> y = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])
        >>> supcon_loss(z, y).shape
        torch.Size([])
    """
    return _supcon(
        embeddings, labels, temperature=temperature, variant=variant,
        base_temperature=base_temperature, normalize=normalize, reduction=reduction,
        backend=backend, gather_distributed=gather_distributed, process_group=process_group,
    ).loss


# --------------------------------------------------------------------------- NT-Xent


def _stack_views(view1: torch.Tensor, view2: torch.Tensor | None) -> torch.Tensor:
    if view2 is None:
        if not isinstance(view1, torch.Tensor) or view1.ndim != 3 or view1.shape[1] < 2:
            shape = tuple(view1.shape) if isinstance(view1, torch.Tensor) else type(view1)
            raise ValueError(
                "embeddings must have shape (B, V, D) with V >= 2, or pass two (B, D) "
                f"views; got shape {shape}"
            )
        return view1
    for name, view in (("view1", view1), ("view2", view2)):
        if not isinstance(view, torch.Tensor) or view.ndim != 2:
            shape = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view)
            raise ValueError(f"{name} must have shape (B, D) when two views are given; "
                             f"got {shape}")
    if view1.shape != view2.shape:
        raise ValueError(f"view2 must have the shape of view1 {tuple(view1.shape)}; "
                         f"got {tuple(view2.shape)}")
    return torch.stack((view1, view2), dim=1)


def _ntxent(
    view1: torch.Tensor,
    view2: torch.Tensor | None,
    *,
    temperature: float,
    normalize: bool,
    reduction: str,
    backend: str,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> ReducedLoss:
    embeddings = _stack_views(view1, view2)
    return _supcon(embeddings, None, temperature=temperature, variant="out",
                   base_temperature=None, normalize=normalize, reduction=reduction,
                   backend=backend, gather_distributed=gather_distributed,
                   process_group=process_group)


def ntxent_loss(
    view1: torch.Tensor,
    view2: torch.Tensor | None = None,
    *,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> torch.Tensor:
    r"""NT-Xent, the SimCLR loss (Chen et al. 2020): SupCon "out" with ``labels=None``.

    Each view's positives are the other views of the same sample; every other view in
    the batch is a negative:

    .. math::

        \ell_i = -\frac{1}{V-1} \sum_{p \in P(i)}
            \Big[ s_{ip} - \log \sum_{a \ne i} e^{s_{ia}} \Big], \quad
        s_{ij} = z_i \cdot z_j / \tau.

    Args:
        view1: ``(B, V, D)`` with ``V >= 2``, or the first view ``(B, D)``.
        view2: the second view ``(B, D)``, or ``None`` when ``view1`` holds all views.
        temperature: ``tau > 0``; 0.1 here, 0.5 in SimCLR and lightly, 0.07 in
            pytorch-metric-learning.
        normalize: L2-normalize each view first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B, V)``).
        backend: who computes the per-anchor losses: ``"auto"`` (chosen from the inputs),
            ``"reference"`` (dense), ``"tiled"`` (no ``N x N`` matrix) or ``"triton"``
            (CUDA, SupCon only); see :mod:`nodulebench.kernels.dispatch`.
        gather_distributed: compute this rank's anchors against the embeddings of
            all ranks, normalised so that DDP's gradient averaging is exact (see
            :doc:`/scaling`); without an initialised process group, the plain loss.
        process_group: the group to gather over; ``None`` means the default group.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> a, b = torch.randn(4, 8), torch.randn(4, 8)
        >>> ntxent_loss(a, b).shape
        torch.Size([])
    """
    return _ntxent(view1, view2, temperature=temperature, normalize=normalize,
                   reduction=reduction, backend=backend,
                   gather_distributed=gather_distributed, process_group=process_group).loss


# --------------------------------------------------------------------------- Contrastive


def _contrastive(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    normalize: bool,
    reduction: str,
    backend: str,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> ReducedLoss:
    check_contrastive_options(margin, reduction)
    check_backend(backend)
    prepared = prepare_embeddings(
        embeddings, labels, normalize=normalize, labels_required=True,
        gather_distributed=gather_distributed, process_group=process_group,
        options={"loss": "contrastive", "margin": margin, "reduction": reduction,
                 "backend": backend},
    )
    loss, valid = run_per_anchor("contrastive", prepared.columns, prepared.column_labels,
                                 backend=backend, row_range=prepared.row_range, margin=margin)
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=prepared)


def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    normalize: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> torch.Tensor:
    r"""Pairwise contrastive loss (Hadsell, Chopra & LeCun 2006), Euclidean distance.

    .. math::

        c_{ij} = \begin{cases} \tfrac12 d_{ij}^2 & y_i = y_j \\
                 \tfrac12 \max(0, m - d_{ij})^2 & y_i \ne y_j \end{cases}, \qquad
        \ell_i = \frac{1}{N - 1} \sum_{j \ne i} c_{ij},

    so the mean over anchors is the mean over all unordered pairs. Every anchor with at
    least one other row is valid (an anchor without positives still has its negatives).

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating.
        labels: ``(B,)`` integer.
        margin: ``m >= 0``.
        normalize: L2-normalize first (off by default, as in the paper).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: who computes the per-anchor losses: ``"auto"`` (chosen from the inputs),
            ``"reference"`` (dense), ``"tiled"`` (no ``N x N`` matrix) or ``"triton"``
            (CUDA, SupCon only); see :mod:`nodulebench.kernels.dispatch`.
        gather_distributed: compute this rank's anchors against the embeddings of
            all ranks, normalised so that DDP's gradient averaging is exact (see
            :doc:`/scaling`); without an initialised process group, the plain loss.
        process_group: the group to gather over; ``None`` means the default group.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> contrastive_loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).shape
        torch.Size([])
    """
    return _contrastive(embeddings, labels, margin=margin, normalize=normalize,
                        reduction=reduction, backend=backend,
                        gather_distributed=gather_distributed, process_group=process_group).loss


# --------------------------------------------------------------------------- Triplet


def _triplet(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    distance: str,
    mining: str,
    normalize: bool,
    reduction: str,
    backend: str,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> ReducedLoss:
    check_triplet_options(margin, distance, mining, reduction)
    check_backend(backend)
    prepared = prepare_embeddings(
        embeddings, labels, normalize=normalize, labels_required=True,
        gather_distributed=gather_distributed, process_group=process_group,
        options={"loss": "triplet", "margin": margin, "distance": distance, "mining": mining,
                 "reduction": reduction, "backend": backend},
    )
    counts = None
    if mining == "all":
        loss, counts, valid = run_per_anchor(
            "triplet_all", prepared.columns, prepared.column_labels, backend=backend,
            row_range=prepared.row_range, margin=margin, distance=distance,
        )
    else:
        loss, valid = run_per_anchor(
            f"triplet_{mining}", prepared.columns, prepared.column_labels, backend=backend,
            row_range=prepared.row_range, margin=margin, distance=distance,
        )
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=prepared, counts=counts)


def triplet_margin_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    mining: str = "hard",
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
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
        margin: ``m >= 0`` (0.2 as in FaceNet).
        distance: ``"euclidean"``, ``"squared_euclidean"`` or ``"cosine"``.
        mining: ``"hard"``, ``"all"`` or ``"semihard"``.
        normalize: L2-normalize first (FaceNet embeds on the unit sphere).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: who computes the per-anchor losses: ``"auto"`` (chosen from the inputs),
            ``"reference"`` (dense), ``"tiled"`` (no ``N x N`` matrix) or ``"triton"``
            (CUDA, SupCon only); see :mod:`nodulebench.kernels.dispatch`.
        gather_distributed: compute this rank's anchors against the embeddings of
            all ranks, normalised so that DDP's gradient averaging is exact (see
            :doc:`/scaling`); without an initialised process group, the plain loss.
        process_group: the group to gather over; ``None`` means the default group.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> triplet_margin_loss(torch.randn(4, 8), y, mining="all").shape
        torch.Size([])
    """
    return _triplet(embeddings, labels, margin=margin, distance=distance, mining=mining,
                    normalize=normalize, reduction=reduction, backend=backend,
                    gather_distributed=gather_distributed, process_group=process_group).loss


# --------------------------------------------------------------------------- Multi-similarity


def _multi_similarity(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    base: float,
    epsilon: float,
    normalize: bool,
    reduction: str,
    backend: str,
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
) -> ReducedLoss:
    check_multi_similarity_options(alpha, beta, base, epsilon, reduction)
    check_backend(backend)
    prepared = prepare_embeddings(
        embeddings, labels, normalize=normalize, labels_required=True,
        gather_distributed=gather_distributed, process_group=process_group,
        options={"loss": "multi_similarity", "alpha": alpha, "beta": beta, "base": base,
                 "epsilon": epsilon, "reduction": reduction, "backend": backend},
    )
    loss, valid = run_per_anchor(
        "multi_similarity", prepared.columns, prepared.column_labels, backend=backend,
        row_range=prepared.row_range, alpha=alpha, beta=beta, base=base, epsilon=epsilon,
    )
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=prepared)


def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
    process_group: ProcessGroup | None = None,
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
        alpha: positive scale ``> 0`` (published 2).
        beta: negative scale ``> 0`` (published 50).
        base: the similarity margin :math:`\lambda` in ``[-1, 1]`` (published 0.5).
        epsilon: mining margin ``>= 0`` (published 0.1).
        normalize: L2-normalize first, so that ``S`` is the cosine similarity; with
            ``False`` ``S`` is the raw dot product.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: who computes the per-anchor losses: ``"auto"`` (chosen from the inputs),
            ``"reference"`` (dense), ``"tiled"`` (no ``N x N`` matrix) or ``"triton"``
            (CUDA, SupCon only); see :mod:`nodulebench.kernels.dispatch`.
        gather_distributed: compute this rank's anchors against the embeddings of
            all ranks, normalised so that DDP's gradient averaging is exact (see
            :doc:`/scaling`); without an initialised process group, the plain loss.
        process_group: the group to gather over; ``None`` means the default group.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Example:
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> multi_similarity_loss(torch.randn(4, 8), y).shape
        torch.Size([])
    """
    return _multi_similarity(embeddings, labels, alpha=alpha, beta=beta, base=base,
                             epsilon=epsilon, normalize=normalize, reduction=reduction,
                             backend=backend,
                             gather_distributed=gather_distributed,
                             process_group=process_group).loss


# --------------------------------------------------------------------------- Cross-entropy


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

    Example:
        >>> cross_entropy_loss(torch.randn(4, 3), torch.tensor([0, 2, 1, 0])).shape
        torch.Size([])
    """
    check_ndim("logits", logits, (2,), "(B, C)")
    check_floating("logits", logits)
    check_ndim("targets", targets, (1,), "(B,)")
    check_integer_tensor("targets", targets)
    batch, num_classes = logits.shape
    if targets.shape[0] != batch:
        raise ValueError(f"targets must have shape (B,) = ({batch},) to match logits of shape "
                         f"{tuple(logits.shape)}; got shape {tuple(targets.shape)}")
    if targets.numel() > 0:
        low, high = int(targets.min().item()), int(targets.max().item())
        if low < 0 or high >= num_classes:
            raise ValueError(f"targets must lie in [0, {num_classes}) for logits with "
                             f"C = {num_classes} classes; got values in [{low}, {high}]")
    check_cross_entropy_options(label_smoothing, weight, reduction)
    dtype = compute_dtype(logits.dtype)
    if weight is not None:
        if weight.shape[0] != num_classes:
            raise ValueError(f"weight must have shape (C,) = ({num_classes},); "
                             f"got shape {tuple(weight.shape)}")
        weight = weight.to(device=logits.device, dtype=dtype)
    return F.cross_entropy(logits.to(dtype), targets.to(device=logits.device, dtype=torch.int64),
                           weight=weight, reduction=reduction, label_smoothing=label_smoothing)
