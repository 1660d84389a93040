r"""Two-tower losses for paired embeddings: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

A batch holds ``B`` pairs ``(image_emb[i], text_emb[i])`` of shape ``(B, D)`` each (any
two towers: image and text, two modalities, two encoders). Row ``i`` of one tower is the
positive of row ``i`` of the other; every other row of the other tower is a negative.
The scale and bias are floats or 0-dim tensors, so they can be learned: the modules
:class:`~nodulebench.ClipLoss` and :class:`~nodulebench.SigLipLoss` hold them as
``torch.nn.Parameter``.

Both run the usual three steps (prepare, per-anchor, reduce); the per-pair losses come
from :func:`nodulebench.kernels.dispatch.run_two_tower`: the dense definitions
(``"reference"``, ``B x B`` logits) or the tiled engine (``"tiled"``, :math:`O(B D)`
memory). With ``gather_distributed=True`` each rank's pairs are the anchors, compared
with the gathered other tower, and the reduction follows the exact-gradient contract of
:doc:`/scaling`; the learnable scale and bias receive exact gradients too. A rank that
rejects its towers still meets the others at the gather's header exchange, so that every
rank raises instead of some waiting for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from nodulebench._validation import check_choice, check_floating, check_ndim, check_positive
from nodulebench.distributed import check_timeout
from nodulebench.kernels.dispatch import BACKEND_CHOICES, run_two_tower
from nodulebench.losses._declaration import EmbeddingOptions, functional_form, option
from nodulebench.losses._inputs import (
    REDUCTIONS,
    PreparedEmbeddings,
    ReducedLoss,
    abandon_if_gathering,
    compute_dtype,
    prepare_embeddings,
    reduce_per_anchor,
)
from nodulebench.losses.registry import register_loss

# Imported at run time where available so that the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
    "CLIP_TEMPERATURE",
    "ClipOptions",
    "SigLipOptions",
    "SIGLIP_BIAS",
    "SIGLIP_LOGIT_SCALE",
    "ClipLoss",
    "SigLipLoss",
    "TwoTowerLoss",
    "clip_loss",
    "siglip_loss",
]

CLIP_TEMPERATURE = 0.07
"""CLIP's initial temperature (logit scale :math:`1/0.07`, Radford et al. 2021)."""

SIGLIP_LOGIT_SCALE = math.log(10.0)
r"""SigLIP's initial log-scale :math:`t' = \log 10` (Zhai et al. 2023)."""

SIGLIP_BIAS = -10.0
"""SigLIP's initial logit bias :math:`b = -10` (Zhai et al. 2023)."""

Scalar = float | torch.Tensor

MAX_LOG_SCALE = math.log(1000.0)
"""The largest ``logit_scale`` accepted (a scale of 1000): a larger one is almost surely
an exponentiated scale, as open_clip passes it (``model.logit_scale.exp()``, 14.3 to 100)."""


def _check_log_scale(value: Scalar) -> None:
    """Raise ``ValueError`` for a ``logit_scale`` that cannot be a log-scale.

    A tensor is read on the host (one synchronisation), except while ``torch.compile``
    traces.
    """
    if isinstance(value, torch.Tensor):
        if torch.compiler.is_compiling() or value.device.type == "meta":
            return
        if not bool(value.detach() > MAX_LOG_SCALE):
            return
        number = float(value.detach())
    elif isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_LOG_SCALE:
        number = float(value)
    else:
        return
    raise ValueError(
        f"logit_scale is a log-scale: the logits are multiplied by exp(logit_scale), here "
        f"exp({number:g}) = {math.exp(min(number, 700.0)):.3g}, and values above "
        f"log(1000) = {MAX_LOG_SCALE:.4f} are refused. open_clip passes the exponentiated "
        "scale (model.logit_scale.exp(), about 14.3 to 100): pass logit_scale=math.log(scale) "
        "(scale.log() for a tensor; gradients flow through it) or, for CLIP, "
        f"temperature=1 / scale; got logit_scale={number:g}"
    )


def _scalar(name: str, value: Scalar, like: torch.Tensor, *, positive: bool) -> torch.Tensor:
    """``value`` as a 0-dim tensor in the compute dtype of ``like``, on its device.

    A tensor keeps its gradient.
    """
    dtype = compute_dtype(like.dtype)
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        if value.shape != ():
            raise ValueError(
                f"{name} must be a float or a 0-dim tensor (shape ()); "
                f"got shape {tuple(value.shape)}"
            )
        # The value check reads the tensor (one host synchronisation); skipped while
        # torch.compile traces, where it would break the graph.
        if (
            positive
            and not torch.compiler.is_compiling()
            and not bool((value > 0) & torch.isfinite(value))
        ):
            raise ValueError(f"{name} must be a finite number > 0; got {value.detach().item()!r}")
        return value.to(dtype=dtype, device=like.device)
    if positive:
        check_positive(name, value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a real number or a 0-dim tensor; got {type(value).__name__}"
        )
    elif not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return torch.tensor(float(value), dtype=dtype, device=like.device)


def _reject_open_clip_scale(owner: str, *values: object) -> None:
    """Raise ``TypeError`` if open_clip's per-call scale (or bias) reached a module."""
    if any(value is not None for value in values):
        raise TypeError(
            f"{owner} holds its own logit_scale (and bias) as parameters, so forward takes "
            "only the two towers; to use open_clip's per-call values call clip_loss / "
            "siglip_loss(image_emb, text_emb, logit_scale=scale.log(), bias=logit_bias), "
            "since open_clip's logit_scale is already exponentiated"
        )


def _check_towers(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    """Raise unless the towers are floating ``(B, D)`` tensors that pair up row by row."""
    check_ndim("image_emb", image_emb, (2,), "(B, D)")
    check_ndim("text_emb", text_emb, (2,), "(B, D)")
    check_floating("image_emb", image_emb)
    check_floating("text_emb", text_emb)
    if image_emb.numel() == 0:
        raise ValueError(
            "image_emb must hold at least one pair and one feature (B, D >= 1); got shape "
            f"{tuple(image_emb.shape)}"
        )
    if text_emb.shape != image_emb.shape:
        raise ValueError(
            f"text_emb must have image_emb's shape (B, D) = "
            f"{tuple(image_emb.shape)}, one row per pair; got shape "
            f"{tuple(text_emb.shape)}"
        )
    if text_emb.dtype != image_emb.dtype:
        raise TypeError(
            f"text_emb must have image_emb's dtype {image_emb.dtype}; got {text_emb.dtype}"
        )
    if text_emb.device != image_emb.device:
        raise ValueError(
            f"text_emb must be on image_emb's device {image_emb.device}; got {text_emb.device}"
        )


def _prepare_towers(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    normalize: bool,
    gather_distributed: bool,
    process_group: ProcessGroup | None,
    options: dict[str, object],
    gather_timeout: float | None = None,
) -> tuple[PreparedEmbeddings, PreparedEmbeddings]:
    """Prepare (and, with ``gather_distributed``, gather) each checked tower.

    ``options`` (the loss's name and options) must agree on every rank; a learnable
    tensor is compared by value (one host synchronisation, only when gathering).
    """
    agreed = options
    image, text = (
        prepare_embeddings(
            emb,
            None,
            normalize=normalize,
            labels_required=False,
            gather_distributed=gather_distributed,
            process_group=process_group,
            options=agreed,
            gather_timeout=gather_timeout,
        )
        for emb in (image_emb, text_emb)
    )
    return image, text


_SCALAR_DOC = (
    "a float or a 0-dim tensor (learnable; a tensor's value is checked, one host "
    "synchronisation, except while ``torch.compile`` traces)"
)


@dataclass(frozen=True)
class ClipOptions(EmbeddingOptions):
    """The options of :func:`~nodulebench.losses.functional.clip_loss` (scale, then the rest).

    The values of ``temperature`` and ``logit_scale`` are checked when the loss runs,
    against the towers' dtype and device.
    """

    temperature: Scalar | None = option(
        None,
        r":math:`\tau > 0`: scale :math:`s = 1/\tau`; "
        + _SCALAR_DOC
        + "; neither this nor ``logit_scale`` means :math:`\tau = 0.07`",
    )
    logit_scale: Scalar | None = option(
        None,
        ":math:`t`: scale :math:`s = e^t` (CLIP's learnable parametrisation; CLIP "
        "clips :math:`s` at 100, :class:`~nodulebench.ClipLoss` does, this function does "
        "not); " + _SCALAR_DOC,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature is not None and self.logit_scale is not None:
            raise ValueError(
                "pass temperature or logit_scale, not both; got temperature="
                f"{self.temperature!r} and logit_scale={self.logit_scale!r}"
            )


@dataclass(frozen=True)
class SigLipOptions(EmbeddingOptions):
    """The options of :func:`~nodulebench.losses.functional.siglip_loss` (scale, bias, rest)."""

    logit_scale: Scalar = option(
        SIGLIP_LOGIT_SCALE,
        ":math:`t'`: scale :math:`e^{t'}` "
        r"(SigLIP initialises :math:`\log 10`); " + _SCALAR_DOC,
    )
    bias: Scalar = option(SIGLIP_BIAS, ":math:`b` (SigLIP initialises -10); " + _SCALAR_DOC)


def _clip(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    options: ClipOptions,
    *,
    check_log_scale: bool = True,
) -> ReducedLoss:
    temperature, logit_scale = options.temperature, options.logit_scale
    normalize, reduction, backend = options.normalize, options.reduction, options.backend
    gather_distributed, process_group = options.gather_distributed, options.process_group
    # Every check before the gather's collectives.
    try:
        _check_towers(image_emb, text_emb)
        if logit_scale is not None:
            log_scale = _scalar("logit_scale", logit_scale, image_emb, positive=False)
            if check_log_scale:
                _check_log_scale(logit_scale)
            scale = log_scale.exp()
        else:
            tau = CLIP_TEMPERATURE if temperature is None else temperature
            scale = 1.0 / _scalar("temperature", tau, image_emb, positive=True)
    except (TypeError, ValueError):
        abandon_if_gathering(image_emb, gather_distributed, process_group)
        raise
    image, text = _prepare_towers(
        image_emb,
        text_emb,
        normalize=normalize,
        gather_distributed=gather_distributed,
        process_group=process_group,
        gather_timeout=options.gather_timeout,
        options={
            "loss": "clip",
            "temperature": temperature,
            "logit_scale": logit_scale,
            "reduction": reduction,
            "backend": backend,
        },
    )
    loss, valid = run_two_tower(
        "clip", image.columns, text.columns, backend=backend, row_range=image.row_range, scale=scale
    )
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=image)


@functional_form(ClipOptions)
def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, **options: Any) -> torch.Tensor:
    r"""CLIP's symmetric InfoNCE loss (Radford et al. 2021) over ``B`` paired embeddings.

    With the logits :math:`L_{ij} = s\, x_i \cdot y_j` of image :math:`i` against text
    :math:`j`, the loss is the mean of the image->text and the text->image
    cross-entropies, each pair's own partner being the target:

    .. math::

        \ell_i = \tfrac12 \Big[ \operatorname{LSE}_j L_{ij} - L_{ii} \Big]
               + \tfrac12 \Big[ \operatorname{LSE}_k L_{ki} - L_{ii} \Big], \qquad
        L = \frac{1}{B} \sum_i \ell_i .

    The scale is :math:`s = 1/\tau` (``temperature``) or :math:`s = e^{t}`
    (``logit_scale``, CLIP's learnable parametrisation); pass at most one of them;
    neither means :math:`\tau = 0.07`. The loss is symmetric in the two towers.

    Args:
        image_emb: ``(B, D)`` floating, the first tower.
        text_emb: ``(B, D)``, the second tower, same dtype and device; row ``i`` pairs
            with ``image_emb[i]``.
        **options: see the table below (``reduction="none"`` gives shape ``(B,)``).

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Raises:
        TypeError: non-tensor or non-floating inputs, towers of different dtypes.
        ValueError: towers whose shapes differ or are not ``(B, D)``, a non-positive
            temperature, a scale tensor that is not 0-dim, both ``temperature`` and
            ``logit_scale``, or an invalid option; with ``gather_distributed``, ranks
            whose calls disagree or another rank that rejected its towers (every rank
            raises, none waits).

    Example:
        >>> x = torch.eye(3)
        >>> round(float(clip_loss(x, x, temperature=0.5)), 4)  # log(e^2 + 2) - 2
        0.2395
    """
    return _clip(image_emb, text_emb, ClipOptions.for_call(image_emb, **options)).loss


def _siglip(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    options: SigLipOptions,
    *,
    check_log_scale: bool = True,
) -> ReducedLoss:
    logit_scale, bias = options.logit_scale, options.bias
    normalize, reduction, backend = options.normalize, options.reduction, options.backend
    gather_distributed, process_group = options.gather_distributed, options.process_group
    try:
        _check_towers(image_emb, text_emb)
        log_scale = _scalar("logit_scale", logit_scale, image_emb, positive=False)
        if check_log_scale:
            _check_log_scale(logit_scale)
        scale = log_scale.exp()
        bias_tensor = _scalar("bias", bias, image_emb, positive=False)
    except (TypeError, ValueError):
        abandon_if_gathering(image_emb, gather_distributed, process_group)
        raise
    image, text = _prepare_towers(
        image_emb,
        text_emb,
        normalize=normalize,
        gather_distributed=gather_distributed,
        process_group=process_group,
        gather_timeout=options.gather_timeout,
        options={
            "loss": "siglip",
            "logit_scale": logit_scale,
            "bias": bias,
            "reduction": reduction,
            "backend": backend,
        },
    )
    loss, valid = run_two_tower(
        "siglip",
        image.columns,
        text.columns,
        backend=backend,
        row_range=image.row_range,
        scale=scale,
        bias=bias_tensor,
    )
    return reduce_per_anchor(loss, valid, reduction=reduction, prepared=image)


@functional_form(SigLipOptions)
def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, **options: Any) -> torch.Tensor:
    r"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over ``B`` paired embeddings.

    Every image-text pair is an independent binary classification, positive on the
    diagonal:

    .. math::

        L = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B}
            \log \sigma\big(z_{ij} (e^{t'} x_i \cdot y_j + b)\big), \qquad
        z_{ij} = \begin{cases} +1 & i = j \\ -1 & i \ne j \end{cases}.

    The per-pair loss (``reduction="none"``) is image :math:`i`'s row sum
    :math:`\ell_i = -\sum_j \log\sigma(\cdot)`, so ``"mean"`` is :math:`L` and ``"sum"``
    is :math:`B L`. The paper initialises :math:`t' = \log 10` and :math:`b = -10`.

    Args:
        image_emb: ``(B, D)`` floating, the first tower.
        text_emb: ``(B, D)``, the second tower, same dtype and device.
        **options: see the table below (``reduction="none"`` gives shape ``(B,)``).

    Returns:
        The loss, float32 for fp16/bf16 inputs, the input dtype otherwise.

    Raises:
        TypeError: non-tensor or non-floating inputs, towers of different dtypes.
        ValueError: towers whose shapes differ or are not ``(B, D)``, a scale or bias
            tensor that is not 0-dim, or an invalid option; with ``gather_distributed``, ranks
            whose calls disagree or another rank that rejected its towers (every rank
            raises, none waits).

    Example:
        >>> x = torch.eye(2)
        >>> round(float(siglip_loss(x, x, logit_scale=math.log(10.0), bias=-5.0)), 4)
        0.0134
    """
    return _siglip(image_emb, text_emb, SigLipOptions.for_call(image_emb, **options)).loss


class TwoTowerLoss(torch.nn.Module):
    """Base of the two-tower modules: the options they share, checked at construction.

    Args:
        learnable: hold the scalars as parameters (``True``) or buffers.
        normalize: L2-normalize both towers first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"`` or ``"tiled"``.
        gather_distributed: gather the other tower of all ranks (see :doc:`/scaling`).
        process_group: the group to gather over; ``None`` means the default group.
        gather_timeout: seconds to wait for the other ranks at the gather's header
            exchange before raising ``TimeoutError``; ``None`` waits for the process
            group's timeout (see :doc:`/scaling`).
    """

    def __init__(
        self,
        *,
        learnable: bool,
        normalize: bool,
        reduction: str,
        backend: str,
        gather_distributed: bool,
        process_group: torch.distributed.ProcessGroup | None,
        gather_timeout: float | None = None,
    ) -> None:
        super().__init__()
        check_timeout("gather_timeout", gather_timeout)
        for name, flag in (
            ("learnable", learnable),
            ("normalize", normalize),
            ("gather_distributed", gather_distributed),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool; got {type(flag).__name__}")
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("backend", backend, BACKEND_CHOICES)
        self.learnable = learnable
        self.normalize = normalize
        self.reduction = reduction
        self.backend = backend
        self.gather_distributed = gather_distributed
        self.process_group = process_group
        self.gather_timeout = gather_timeout

    def _scalar_state(self, name: str, value: float) -> None:
        """Hold ``value`` as a learnable parameter, or as a buffer when frozen."""
        tensor = torch.tensor(float(value))
        if self.learnable:
            self.register_parameter(name, torch.nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    def _options_repr(self) -> str:
        gather = ", gather_distributed=True" if self.gather_distributed else ""
        return (
            f"learnable={self.learnable}, normalize={self.normalize}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}{gather}"
        )


@register_loss(
    "clip",
    consumes="paired_embeddings",
    requires_labels=False,
    citation="Radford et al., Learning Transferable Visual Models From Natural "
    "Language Supervision, ICML 2021",
)
class ClipLoss(TwoTowerLoss):
    r"""CLIP's symmetric InfoNCE with CLIP's learnable logit scale.

    The loss is :func:`~nodulebench.losses.functional.clip_loss`.

    The scale is held as ``logit_scale`` :math:`t = \log(1/\tau)`, a 0-dim
    ``torch.nn.Parameter`` (a buffer with ``learnable=False``), and clipped in the
    forward pass so that :math:`e^t` never exceeds ``max_scale`` (CLIP: 100).

    Args:
        temperature: initial :math:`\tau > 0` (CLIP: 0.07).
        learnable: learn the scale (a parameter) or keep it fixed (a buffer).
        max_scale: upper bound of :math:`e^t` (``> 0``), or ``None`` for no bound.
        normalize: L2-normalize both towers first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"`` or ``"tiled"``.
        gather_distributed: gather the other tower of all ranks (see :doc:`/scaling`).
        process_group: the group to gather over; ``None`` means the default group.
        gather_timeout: seconds to wait for the other ranks at the gather's header
            exchange before raising ``TimeoutError``; ``None`` waits for the process
            group's timeout (see :doc:`/scaling`).

    Example:
        >>> loss_fn = ClipLoss(temperature=0.5)
        >>> round(loss_fn(torch.eye(3), torch.eye(3)).item(), 4)
        0.2395
    """

    logit_scale: torch.Tensor

    def __init__(
        self,
        temperature: float = CLIP_TEMPERATURE,
        learnable: bool = True,
        max_scale: float | None = 100.0,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
        gather_distributed: bool = False,
        process_group: torch.distributed.ProcessGroup | None = None,
        gather_timeout: float | None = None,
    ) -> None:
        super().__init__(
            learnable=learnable,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
            gather_distributed=gather_distributed,
            process_group=process_group,
            gather_timeout=gather_timeout,
        )
        check_positive("temperature", temperature)
        if max_scale is not None:
            check_positive("max_scale", max_scale)
        self.max_scale = max_scale
        self._scalar_state("logit_scale", math.log(1.0 / temperature))

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: None = None
    ) -> torch.Tensor:
        """The loss of the pairs ``(image_emb[i], text_emb[i])``, both ``(B, D)``.

        The module holds its own scale; a third argument (open_clip's ``logit_scale``)
        raises ``TypeError`` saying to call
        :func:`~nodulebench.losses.functional.clip_loss` with it instead.
        """
        _reject_open_clip_scale(type(self).__name__, logit_scale)
        scale = self.logit_scale
        if self.max_scale is not None:
            scale = scale.clamp(max=math.log(self.max_scale))
        options = ClipOptions(
            logit_scale=scale,
            normalize=self.normalize,
            reduction=self.reduction,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
            process_group=self.process_group,
            gather_timeout=self.gather_timeout,
        )
        # The held scale was checked when built: no per-call host synchronisation.
        return _clip(image_emb, text_emb, options, check_log_scale=False).loss

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return f"max_scale={self.max_scale}, {self._options_repr()}"


@register_loss(
    "siglip",
    consumes="paired_embeddings",
    requires_labels=False,
    citation="Zhai et al., Sigmoid Loss for Language Image Pre-Training, ICCV 2023",
)
class SigLipLoss(TwoTowerLoss):
    r"""SigLIP's sigmoid loss with its learnable scale and bias.

    The loss is :func:`~nodulebench.losses.functional.siglip_loss`.

    ``logit_scale`` (:math:`t'`) and ``bias`` (:math:`b`) are 0-dim
    ``torch.nn.Parameter`` (buffers with ``learnable=False``).

    Args:
        logit_scale: initial :math:`t'` (SigLIP: :math:`\log 10`).
        bias: initial :math:`b` (SigLIP: -10).
        learnable: learn both (parameters) or keep them fixed (buffers).
        normalize: L2-normalize both towers first.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        backend: ``"auto"``, ``"reference"`` or ``"tiled"``.
        gather_distributed: gather the other tower of all ranks (see :doc:`/scaling`).
        process_group: the group to gather over; ``None`` means the default group.
        gather_timeout: seconds to wait for the other ranks at the gather's header
            exchange before raising ``TimeoutError``; ``None`` waits for the process
            group's timeout (see :doc:`/scaling`).

    Example:
        >>> loss_fn = SigLipLoss(bias=-5.0)
        >>> round(loss_fn(torch.eye(2), torch.eye(2)).item(), 4)
        0.0134
    """

    logit_scale: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        logit_scale: float = SIGLIP_LOGIT_SCALE,
        bias: float = SIGLIP_BIAS,
        learnable: bool = True,
        normalize: bool = True,
        reduction: str = "mean",
        backend: str = "auto",
        gather_distributed: bool = False,
        process_group: torch.distributed.ProcessGroup | None = None,
        gather_timeout: float | None = None,
    ) -> None:
        super().__init__(
            learnable=learnable,
            normalize=normalize,
            reduction=reduction,
            backend=backend,
            gather_distributed=gather_distributed,
            process_group=process_group,
            gather_timeout=gather_timeout,
        )
        for name, value in (("logit_scale", logit_scale), ("bias", bias)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        _check_log_scale(logit_scale)
        for name, value in (("logit_scale", logit_scale), ("bias", bias)):
            self._scalar_state(name, value)

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: None = None,
        logit_bias: None = None,
    ) -> torch.Tensor:
        """The loss of the pairs ``(image_emb[i], text_emb[i])``, both ``(B, D)``.

        The module holds its own scale and bias; open_clip's ``logit_scale`` and
        ``logit_bias`` arguments raise ``TypeError`` saying to call
        :func:`~nodulebench.losses.functional.siglip_loss` with them instead.
        """
        _reject_open_clip_scale(type(self).__name__, logit_scale, logit_bias)
        options = SigLipOptions(
            logit_scale=self.logit_scale,
            bias=self.bias,
            normalize=self.normalize,
            reduction=self.reduction,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
            process_group=self.process_group,
            gather_timeout=self.gather_timeout,
        )
        # The held scale was checked when built: no per-call host synchronisation.
        return _siglip(image_emb, text_emb, options, check_log_scale=False).loss

    def extra_repr(self) -> str:
        """The options, shown in ``repr``."""
        return self._options_repr()
