r"""Losses built against shortcuts: GroupDRO and Correct-N-Contrast.

Both need more than a class label per sample. GroupDRO (Sagawa et al. 2020) takes a
group id per sample (e.g. class x shortcut side) and minimises the worst group's loss
through adaptive group weights; Correct-N-Contrast (Zhang et al. 2022) takes the
predictions of a first, ordinarily trained model and contrasts the samples that model
confuses. Each is declared once (its options class), like every other loss; see
:doc:`/group_robust` for when they help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nodulebench._validation import (
    check_floating,
    check_int,
    check_integer_tensor,
    check_ndim,
)
from nodulebench.distributed import (
    check_timeout,
    gather_sizes,
    get_world_size,
    is_distributed,
    sum_over_ranks,
)
from nodulebench.kernels._dense import SUPCON_VARIANTS, pack_pair_labels
from nodulebench.kernels.dispatch import run_per_anchor
from nodulebench.losses._declaration import (
    LossOptions,
    PairwiseOptions,
    PerAnchor,
    check_bool,
    choice,
    compute_pairwise,
    constructor_signature,
    functional_form,
    non_negative,
    option,
    positive,
    with_options_table,
)
from nodulebench.losses._inputs import (
    PreparedEmbeddings,
    abandon_if_gathering,
    compute_dtype,
)
from nodulebench.losses.modules import PairwiseLoss
from nodulebench.losses.registry import register_loss

# Imported at run time where available so that the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
    "CnCLoss",
    "CnCOptions",
    "GroupDROLoss",
    "GroupDROOptions",
    "GroupDROResult",
    "cnc_loss",
    "group_dro_loss",
]


# --------------------------------------------------------------------------- CnC


def _check_row_vector(name: str, tensor: Any, embeddings: torch.Tensor, what: str) -> None:
    """``tensor`` must be a ``(B,)`` integer tensor on ``embeddings``' device."""
    check_ndim(name, tensor, (1,), "(B,)")
    check_integer_tensor(name, tensor)
    batch = embeddings.shape[0] if embeddings.ndim > 0 else 0
    if tensor.shape[0] != batch:
        raise ValueError(
            f"{name} must have shape (B,) = ({batch},) to match {what} of shape "
            f"{tuple(embeddings.shape)}; got shape {tuple(tensor.shape)}"
        )
    if tensor.device != embeddings.device:
        raise ValueError(
            f"{name} must be on the device of {what} ({embeddings.device}); got {tensor.device}"
        )


_INT32 = (-(2**31), 2**31 - 1)


def _check_packable(name: str, tensor: torch.Tensor) -> None:
    """Correct-N-Contrast packs a label and a prediction into one int64: int32 range each.

    Read on the host (one synchronisation); skipped for meta tensors and while
    ``torch.compile`` traces.
    """
    if tensor.numel() == 0 or tensor.device.type == "meta" or torch.compiler.is_compiling():
        return
    low, high = int(tensor.min()), int(tensor.max())
    if low < _INT32[0] or high > _INT32[1]:
        raise ValueError(
            f"{name} must lie in the int32 range [{_INT32[0]}, {_INT32[1]}] (Correct-N-"
            "Contrast packs a label and a prediction into one int64; remap the ids, e.g. "
            f"with torch.unique(..., return_inverse=True)); got values in [{low}, {high}]"
        )


@dataclass(frozen=True)
class CnCOptions(PairwiseOptions):
    """The options of :func:`cnc_loss` and :class:`CnCLoss`."""

    name: ClassVar[str] = "cnc"
    citation: ClassVar[str] = (
        "Zhang et al., Correct-N-Contrast: A Contrastive Approach for "
        "Improving Robustness to Spurious Correlations, ICML 2022"
    )

    temperature: float = option(0.1, "``tau > 0``", positive)
    variant: str = option(
        "out",
        '``"out"`` (the paper\'s form: mean over positives outside the log) or ``"in"``',
        choice(SUPCON_VARIANTS),
    )

    def kernel(self) -> str:
        """Correct-N-Contrast's per-anchor computation (on pair labels)."""
        return "cnc"

    def per_anchor(self, prepared: PreparedEmbeddings) -> PerAnchor:
        """The kernel's per-anchor loss; the prepared labels are pair labels."""
        z, pair_labels, where = prepared.kernel_inputs()
        loss, valid = run_per_anchor(
            "cnc",
            z,
            pair_labels,
            backend=self.backend,
            **where,
            temperature=self.temperature,
            variant=self.variant,
        )
        return loss, valid, None


def _pair_labels(
    embeddings: torch.Tensor, labels: Any, predictions: Any, options: PairwiseOptions
) -> torch.Tensor:
    """The packed pair labels of checked inputs.

    A rejected input still meets the other ranks at the gather's header exchange, so
    that they raise too instead of waiting for this rank.
    """
    try:
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor; got {type(embeddings).__name__}")
        _check_row_vector("labels", labels, embeddings, "embeddings")
        _check_row_vector("predictions", predictions, embeddings, "embeddings")
        _check_packable("labels", labels)
        _check_packable("predictions", predictions)
    except (TypeError, ValueError):
        abandon_if_gathering(embeddings, options.gather_distributed, options.process_group)
        raise
    return pack_pair_labels(labels, predictions)


@functional_form(CnCOptions)
def cnc_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    **options: Any,
) -> torch.Tensor:
    r"""Correct-N-Contrast's contrastive loss (Zhang et al. 2022).

    A first model trained by plain cross-entropy predicts :math:`k_j` for each sample.
    Its mistakes reveal the shortcut: samples of one class that it predicts
    differently, and samples of different classes that it predicts alike. CnC pulls the
    former together and pushes the latter apart. With :math:`s_{ij} = z_i \cdot z_j /
    \tau`, :math:`P(i) = \{j: y_j = y_i, k_j \ne k_i\}`, :math:`N(i) = \{j: k_j = k_i,
    y_j \ne y_i\}` and :math:`A(i) = P(i) \cup N(i)`,

    .. math::

        \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
            \Big[ s_{ip} - \log \sum_{a \in A(i)} e^{s_{ia}} \Big]

    (``variant="in"`` moves the mean inside the log, as SupCon's). It is SupCon with
    other sets, on the same backends (the tiled engine in :math:`O(N D)` memory).
    Anchors without a positive are excluded from the mean. The paper trains
    :math:`\lambda \cdot` this :math:`+ (1 - \lambda) \cdot` cross-entropy.

    Args:
        embeddings: ``(B, D)`` or ``(B, V, D)`` floating; views share their sample's
            label and prediction.
        labels: ``(B,)`` integer class labels (int32 range), on ``embeddings``' device.
        predictions: ``(B,)`` integer predictions of the first model (int32 range), on
            ``embeddings``' device.
        **options: see the table below.

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Raises:
        TypeError: non-floating ``embeddings``, non-integer ``labels`` or ``predictions``.
        ValueError: wrong shapes, another device, an invalid option; with
            ``gather_distributed``, ranks whose calls disagree or another rank that
            rejected its input (every rank raises, none waits).

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> y, k = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
        >>> print(f"{cnc_loss(z, y, k, temperature=0.5).item():.4f}")
        0.5130
    """
    opts = CnCOptions.for_call(embeddings, **options)
    return compute_pairwise(
        opts, embeddings, _pair_labels(embeddings, labels, predictions, opts)
    ).loss


@register_loss(
    CnCOptions.name,
    consumes="embeddings_and_predictions",
    requires_labels=True,
    citation=CnCOptions.citation,
)
class CnCLoss(PairwiseLoss):
    """Correct-N-Contrast; see :func:`~nodulebench.losses.group_robust.cnc_loss`.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> y, k = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
        >>> print(f"{CnCLoss(temperature=0.5)(z, y, k).item():.4f}")
        0.5130
    """

    Options = CnCOptions

    def forward(  # type: ignore[override]
        self, embeddings: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``embeddings`` with class ``labels`` and first-model ``predictions``."""
        pair_labels = _pair_labels(embeddings, labels, predictions, self.options)
        return self._record(compute_pairwise(self.options, embeddings, pair_labels))


# --------------------------------------------------------------------------- GroupDRO


def _check_group_counts(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a (G,) tensor or None; got {type(value).__name__}")
    check_ndim(name, value, (1,), "(G,)")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be a real tensor; got dtype {value.dtype}")
    if value.numel() and not bool((value > 0).all()):
        raise ValueError(
            f"{name} must be > 0 for every group (training-set sizes); got {value.tolist()}"
        )


def _check_num_groups(name: str, value: Any) -> None:
    check_int(name, value, 1)


@dataclass(frozen=True)
class GroupDROOptions(LossOptions):
    """The options of :func:`group_dro_loss` and :class:`GroupDROLoss`."""

    name: ClassVar[str] = "group_dro"
    citation: ClassVar[str] = (
        "Sagawa et al., Distributionally Robust Neural Networks for Group Shifts, ICLR 2020"
    )

    num_groups: int = option(
        4,
        "number of groups :math:`G` (e.g. 2 classes x 2 shortcut "
        "sides); group ids lie in ``[0, G)``",
        _check_num_groups,
    )
    step_size: float = option(
        0.01,
        r"step :math:`\eta_q` of the exponentiated-gradient "
        "update of the group weights (the paper's 0.01)",
        non_negative,
    )
    adjustment: float = option(
        0.0,
        r"group adjustment :math:`C`: each group's loss gets "
        r":math:`C / \sqrt{n_g}` in the update (0: none)",
        non_negative,
    )
    group_counts: torch.Tensor | None = option(
        None,
        r"``(G,)`` training-set size :math:`n_g` of each group (needed when "
        "``adjustment > 0``)",
        _check_group_counts,
    )
    reduction: str = option(
        "mean",
        '``"mean"`` (the weighted group mean, the objective) '
        'or ``"none"`` (per-sample shares that sum to it, shape '
        "``(B,)``)",
        choice(("mean", "none")),
        kw_only=True,
    )
    gather_distributed: bool = option(
        False,
        "sum the group losses and counts over ranks before the update, so that "
        "every rank keeps the same weights and the loss is exact under DDP's gradient "
        "averaging (see :doc:`/scaling`)",
        check_bool,
        kw_only=True,
    )
    process_group: ProcessGroup | None = option(
        None, "the group to sum over; ``None`` means the default group", kw_only=True
    )
    gather_timeout: float | None = option(
        None,
        "seconds to wait at the header exchange for the other ranks before raising "
        "``TimeoutError`` that names the loss and this rank; ``None`` waits for the "
        "process group's timeout (see :ref:`scaling-timeout`)",
        check_timeout,
        kw_only=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_counts is not None and self.group_counts.shape[0] != self.num_groups:
            raise ValueError(
                f"group_counts must have shape (G,) = ({self.num_groups},); got "
                f"shape {tuple(self.group_counts.shape)}"
            )
        if self.adjustment > 0 and self.group_counts is None:
            raise ValueError(
                "group_counts must be given when adjustment > 0 (the adjustment "
                f"is C / sqrt(n_g)); got adjustment={self.adjustment!r} and "
                "group_counts=None"
            )


class GroupDROResult(NamedTuple):
    """What one GroupDRO step returns.

    Attributes:
        loss: the loss (scalar, or ``(B,)`` for ``reduction="none"``).
        group_weights: ``(G,)`` the weights :math:`q` after the update (float64).
        group_losses: ``(G,)`` the mean loss of each group in the batch (over all ranks
            when gathered; 0 for an absent group), detached, float64.
        group_counts: ``(G,)`` int64 samples of each group in the batch (over all ranks
            when gathered).
    """

    loss: torch.Tensor
    group_weights: torch.Tensor
    group_losses: torch.Tensor
    group_counts: torch.Tensor


def _check_dro_inputs(logits: Any, labels: Any, groups: Any, weights: Any, num_groups: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor; got {type(logits).__name__}")
    check_ndim("logits", logits, (2,), "(B, C)")
    check_floating("logits", logits)
    if logits.numel() == 0:
        raise ValueError(
            "logits must hold at least one sample and one class (B, C >= 1); got shape "
            f"{tuple(logits.shape)}"
        )
    _check_row_vector("labels", labels, logits, "logits")
    _check_row_vector("groups", groups, logits, "logits")
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"group_weights must be a torch.Tensor; got {type(weights).__name__}")
    if weights.shape != (num_groups,):
        raise ValueError(
            f"group_weights must have shape (G,) = ({num_groups},); got shape "
            f"{tuple(weights.shape)}"
        )
    if weights.device != logits.device:
        raise ValueError(
            f"group_weights must be on the device of logits ({logits.device}); got {weights.device}"
        )
    if groups.numel():
        low, high = int(groups.min()), int(groups.max())
        if low < 0 or high >= num_groups:
            raise ValueError(
                f"groups must lie in [0, {num_groups}) for num_groups = "
                f"{num_groups}; got values in [{low}, {high}]"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(
                f"labels must lie in [0, {logits.shape[1]}) for logits with C = "
                f"{logits.shape[1]} classes; got values in [{low}, {high}]"
            )


@functional_form(GroupDROOptions)
def group_dro_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    group_weights: torch.Tensor,
    *,
    update: bool = True,
    **options: Any,
) -> GroupDROResult:
    r"""One step of online GroupDRO (Sagawa et al. 2020, Algorithm 1, on mini-batches).

    With per-sample cross-entropy :math:`\ell_b`, the batch's group means
    :math:`L_g = \frac{1}{m_g} \sum_{b: g_b = g} \ell_b` (:math:`m_g` samples of group
    :math:`g`), the weights are first updated by an exponentiated-gradient step and
    renormalised, then weight the group losses:

    .. math::

        q_g \leftarrow \frac{q_g\, e^{\eta_q (L_g + C / \sqrt{n_g})}}
            {\sum_h q_h\, e^{\eta_q (L_h + C / \sqrt{n_h})}}, \qquad
        \mathcal{L} = \sum_g q_g L_g .

    The weights are constants for the gradient (``L_g`` is detached in the update). A
    group absent from the batch (:math:`m_g = 0`) gets no factor (its exponent is 0,
    not :math:`\eta_q (0 + C/\sqrt{n_g})`): its weight changes only through the
    renormalisation, and it adds nothing to :math:`\mathcal{L}`. Nothing becomes NaN.

    With ``gather_distributed=True`` the group sums of :math:`\ell` and the counts
    :math:`m_g` are summed over the ranks before the update, so every rank computes the
    same :math:`q`. Before that the ranks exchange one header (as the pairwise losses do):
    ranks whose logits (but for ``B``), options or ``update`` differ all raise the same
    ``ValueError``, and a rank that rejects its own input makes the others raise one
    naming it, instead of leaving them waiting. Each rank returns :math:`W` times its share
    :math:`\sum_g q_g \sum_{b \in \text{rank}, g_b = g} \ell_b / m_g`, whose average over
    the :math:`W` ranks (DDP's gradient averaging) is the single-process loss.

    Args:
        logits: ``(B, C)`` floating.
        labels: ``(B,)`` integer classes in ``[0, C)``, on ``logits``' device.
        groups: ``(B,)`` integer group ids in ``[0, G)``, on ``logits``' device.
        group_weights: ``(G,)`` the current weights :math:`q` (positive, summing to 1),
            on ``logits``' device.
        update: take the step (training); ``False`` weights the group losses by
            ``group_weights`` unchanged (evaluation).
        **options: see the table below.

    Returns:
        A :class:`GroupDROResult`: the loss, the new weights, the group losses and counts.

    Raises:
        TypeError: non-tensor or non-floating ``logits``, non-integer ``labels``/``groups``.
        ValueError: wrong shapes, ids out of range, a tensor on another device, an
            invalid option; with ``gather_distributed``, ranks whose calls disagree or
            another rank that rejected its input (every rank raises, none waits).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
        >>> labels, groups = torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 2, 3])
        >>> step = group_dro_loss(logits, labels, groups, torch.full((4,), 0.25), step_size=1.0)
        >>> print([round(q, 3) for q in step.group_weights.tolist()])
        [0.156, 0.188, 0.511, 0.144]
    """
    opts = GroupDROOptions.for_call(logits, **options)
    try:
        _check_dro_inputs(logits, labels, groups, group_weights, opts.num_groups)
    except (TypeError, ValueError):
        abandon_if_gathering(logits, opts.gather_distributed, opts.process_group)
        raise
    if opts.gather_distributed:
        # The ranks' logits and options must agree before their group sums are added.
        gather_sizes(
            logits,
            opts.process_group,
            # The weights too: ranks whose weights drifted apart would each compute another loss.
            agree={**opts.header(), "update": update, "group_weights": group_weights},
            name="logits",
            timeout=opts.gather_timeout,
        )
    dtype = compute_dtype(logits.dtype)
    per_sample = F.cross_entropy(logits.to(dtype), labels.to(torch.int64), reduction="none")
    groups = groups.to(torch.int64)
    sums = per_sample.new_zeros(opts.num_groups).index_add(0, groups, per_sample)
    counts = torch.bincount(groups, minlength=opts.num_groups)
    gather = opts.gather_distributed and is_distributed(opts.process_group)
    if gather:
        counts = sum_over_ranks(counts, opts.process_group)
    present = counts > 0
    divisor = counts.clamp(min=1).to(dtype)
    total = sum_over_ranks(sums, opts.process_group) if gather else sums.detach()
    group_losses = (total / divisor).to(torch.float64)
    weights = group_weights.detach().to(torch.float64)
    if update:
        exponent = group_losses
        if opts.group_counts is not None and opts.adjustment > 0:
            sizes = opts.group_counts.to(device=weights.device, dtype=torch.float64)
            exponent = exponent + opts.adjustment / sizes.sqrt()
        # Log domain: the same normalised product, without overflow of q * exp(.).
        exponent = torch.where(present, opts.step_size * exponent, 0.0)
        weights = torch.softmax(weights.log() + exponent, dim=0)
    scale = weights.to(dtype) / divisor
    if gather:
        scale = scale * get_world_size(opts.process_group)
    if opts.reduction == "none":
        loss = per_sample * scale[groups]
    else:
        loss = (sums * scale).sum()
    return GroupDROResult(loss, weights, group_losses, counts)


class GroupDROLoss(torch.nn.Module):
    r"""GroupDRO; see :func:`~nodulebench.losses.group_robust.group_dro_loss`.

    The group weights :math:`q` are the buffer ``group_weights`` (float64, uniform at
    first), so they are in ``state_dict``, follow ``.to(device)`` and resume with a
    checkpoint. They are updated on every call in training mode and left as they are in
    evaluation mode (``loss.eval()``). The training-set group sizes, if given, are the
    buffer ``group_counts``.

    Attributes:
        last_group_losses: ``(G,)`` the group losses of the last call (None before).

    Example:
        >>> loss_fn = GroupDROLoss(num_groups=2, step_size=1.0)
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> loss = loss_fn(logits, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
        >>> print(f"{loss.item():.4f}", [round(q, 3) for q in loss_fn.group_weights.tolist()])
        0.5834 [0.335, 0.665]
    """

    group_weights: torch.Tensor
    group_counts: torch.Tensor | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        names = GroupDROOptions.__match_args__
        if len(args) > len(names):
            raise TypeError(
                f"GroupDROLoss takes at most {len(names)} positional options; got {len(args)}"
            )
        self.options = GroupDROOptions.from_kwargs(**dict(zip(names, args, strict=False)), **kwargs)
        groups = self.options.num_groups
        self.register_buffer(
            "group_weights", torch.full((groups,), 1.0 / groups, dtype=torch.float64)
        )
        counts = self.options.group_counts
        self.register_buffer("group_counts", None if counts is None else counts.clone())
        self.last_group_losses: torch.Tensor | None = None

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        """Loss of ``logits`` ``(B, C)`` with ``labels`` and group ids ``groups`` ``(B,)``."""
        # The options as given, but the group sizes from the buffer (it follows .to()).
        options = {
            item.name: getattr(self.options, item.name) for item in dataclasses.fields(self.options)
        }
        options["group_counts"] = self.group_counts
        result = group_dro_loss(
            logits, labels, groups, self.group_weights, update=self.training, **options
        )
        if self.training:
            with torch.no_grad():
                self.group_weights.copy_(result.group_weights)
        self.last_group_losses = result.group_losses
        return result.loss

    def extra_repr(self) -> str:
        """The options that differ from their defaults, and the reduction."""
        return self.options.describe()


GroupDROLoss.__signature__ = constructor_signature(GroupDROOptions)  # type: ignore[attr-defined]
GroupDROLoss.__doc__ = with_options_table(GroupDROLoss.__doc__, GroupDROOptions)
register_loss(
    GroupDROOptions.name,
    consumes="logits_and_groups",
    requires_labels=True,
    citation=GroupDROOptions.citation,
)(GroupDROLoss)
