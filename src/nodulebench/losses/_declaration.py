"""How a loss is declared: its options, once, as a frozen dataclass that validates itself.

A loss's options class lists each option with its default, a one-line meaning and its
check (:func:`option`). Everything else is derived from it: the module's constructor
signature and ``extra_repr`` (:class:`~nodulebench.losses.modules.PairwiseLoss`), the
functional form's signature (:func:`functional_form`), the registry entry (its
accepted keywords) and the options table in the docstrings (:func:`options_table`).
A pairwise loss's options also name the per-anchor kernel that computes it
(:meth:`PairwiseOptions.per_anchor`); :func:`compute_pairwise` is the one path from
inputs to a reduced loss that every pairwise loss takes.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
import torch.distributed as dist

from nodulebench._validation import check_choice, check_in_range, check_positive, did_you_mean
from nodulebench.distributed import check_timeout
from nodulebench.kernels.dispatch import BACKEND_CHOICES, run_per_anchor
from nodulebench.losses._inputs import (
    REDUCTIONS,
    PreparedEmbeddings,
    ReducedLoss,
    abandon_if_gathering,
    prepare_embeddings,
    reduce_per_anchor,
)

# Imported at run time where available so that the docs resolve the annotation.
if TYPE_CHECKING or dist.is_available():
    from torch.distributed import ProcessGroup

__all__ = [
    "EmbeddingOptions",
    "LossOptions",
    "PairwiseOptions",
    "PerAnchor",
    "compute_pairwise",
    "compute_prepared",
    "functional_form",
    "option",
    "options_table",
]

Check = Callable[[str, Any], None]
PerAnchor = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""``(loss, valid, counts)`` per anchor; ``counts`` only for sums of several terms."""


def option(default: Any, doc: str, check: Check | None = None, *, kw_only: bool = False) -> Any:
    """Declare one option: its default, its meaning (for the docs) and its check.

    Args:
        default: the default value.
        doc: one line, shown in the options table of the loss's docs.
        check: ``check(name, value)`` raises ``TypeError``/``ValueError`` on a bad value.
        kw_only: keyword-only in the derived signatures.

    Returns:
        A dataclass ``field`` carrying ``doc`` and ``check`` as metadata.
    """
    return field(default=default, metadata={"doc": doc, "check": check}, kw_only=kw_only)


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")


def choice(choices: tuple[Any, ...]) -> Check:
    """A check that ``value`` is one of ``choices`` (with a did-you-mean hint)."""

    def check(name: str, value: Any) -> None:
        check_choice(name, value, choices)

    return check


def positive(name: str, value: Any) -> None:
    """A check that ``value`` is a finite real number ``> 0``."""
    check_positive(name, value)


def non_negative(name: str, value: Any) -> None:
    """A check that ``value`` is a finite real number ``>= 0``."""
    check_positive(name, value, allow_zero=True)


def temperature_value(name: str, value: Any) -> None:
    """A check that ``value`` is a real number or a 0-dim floating tensor (maybe learnable).

    Its sign is checked by the loss, which knows whether it is a log-scale.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise ValueError(
                f"{name} must be a float or a 0-dim tensor; got a tensor of "
                f"shape {tuple(value.shape)}"
            )
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor; got dtype {value.dtype}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a real number or a 0-dim tensor; got {type(value).__name__}"
        )


def in_range(low: float, high: float) -> Check:
    """A check that ``value`` lies in ``[low, high]``."""

    def check(name: str, value: Any) -> None:
        check_in_range(name, value, low, high)

    return check


def optional(check: Check) -> Check:
    """``check``, or ``None``."""

    def check_unless_none(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)

    return check_unless_none


_Options = TypeVar("_Options", bound="LossOptions")

FOREIGN_ARGUMENTS: dict[str, str] = {
    "indices_tuple": (
        "indices_tuple (pytorch-metric-learning's miner output) is not taken: each loss "
        "chooses its pairs itself (triplet_margin_loss / TripletMarginLoss mining='hard', "
        "'semihard' or 'all'; multi-similarity mines inside the loss); for extra "
        "candidates pass ref_emb and ref_labels, or wrap the loss in CrossBatchMemory"
    ),
    "logit_bias": (
        "logit_bias is open_clip's name for SigLIP's bias: pass bias= (siglip_loss / "
        "SigLipLoss), a float or a 0-dim tensor added to every logit"
    ),
    "embedding_regularizer": (
        "embedding_regularizer (pytorch-metric-learning) is not taken: add a "
        "regularisation term to the loss yourself"
    ),
    "reducer": (
        "reducer (pytorch-metric-learning) is not taken: pass reduction='mean', 'sum' or "
        "'none' and reduce the per-anchor losses as you need"
    ),
}
"""Arguments of pytorch-metric-learning and open_clip that the losses do not take, and
what to use instead: passing one raises ``TypeError`` with this advice."""


def reject_foreign_arguments(owner: str, **given: object) -> None:
    """Raise ``TypeError`` naming the first ``given`` argument that is not ``None``.

    For arguments of other libraries (see :data:`FOREIGN_ARGUMENTS`), passed by name or
    in their position.
    """
    for name, value in given.items():
        if value is not None:
            raise TypeError(f"{owner} got {name}=: {FOREIGN_ARGUMENTS[name]}")


@dataclass(frozen=True)
class LossOptions:
    """Base of every loss's options: each field is checked when the options are built.

    Subclasses are frozen dataclasses whose fields come from :func:`option`; building
    one validates every field, so a bad option fails where it is given. A registry loss
    also names itself and its paper (class variables ``name`` and ``citation``).
    """

    name: ClassVar[str]
    citation: ClassVar[str]

    def header(self) -> dict[str, object]:
        """The loss's name and options, as the ranks of a gather must agree on them.

        Every option, tensor-valued ones included (a learnable temperature is compared
        by value: ranks that hold different values would each compute another loss);
        the process group, the gather switch and the timeout are left out.
        """
        header: dict[str, object] = {"loss": self.name}
        for item in declared_fields(type(self)):
            if item.name in ("gather_distributed", "process_group", "gather_timeout"):
                continue
            header[item.name] = getattr(self, item.name)
        return header

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check = item.metadata.get("check")
            if check is not None:
                check(item.name, getattr(self, item.name))

    @classmethod
    def from_kwargs(cls: type[_Options], **kwargs: Any) -> _Options:
        """Build the options from keywords; an unknown one raises with a hint.

        Raises:
            TypeError: an unknown keyword (the message lists the accepted ones and the
                closest match).
        """
        accepted = [item.name for item in declared_fields(cls)]
        for name in kwargs:
            if name not in accepted and name in FOREIGN_ARGUMENTS:
                raise TypeError(f"{cls.__name__} got {name}=: {FOREIGN_ARGUMENTS[name]}")
            if name not in accepted:
                raise TypeError(
                    f"{cls.__name__} got an unknown option {name!r}"
                    f"{did_you_mean(name, accepted)}; accepted: {', '.join(accepted)}"
                )
        return cls(**kwargs)

    @classmethod
    def for_call(cls: type[_Options], tensor: object, **kwargs: Any) -> _Options:
        """:meth:`from_kwargs` for a functional call whose first input is ``tensor``.

        A rank whose options are rejected under ``gather_distributed=True`` still meets
        the other ranks at the header exchange before raising, as a rank whose input is
        rejected does: they fail naming it instead of waiting for it.
        """
        try:
            return cls.from_kwargs(**kwargs)
        except (TypeError, ValueError):
            abandon_if_gathering(
                tensor, kwargs.get("gather_distributed"), kwargs.get("process_group")
            )
            raise

    def describe(self) -> str:
        """``name=value`` of the options that differ from their defaults, for ``repr``."""
        parts = []
        for item in declared_fields(type(self)):
            value = getattr(self, item.name)
            if item.name in ("reduction", "backend") or not _is_default(value, item.default):
                parts.append(f"{item.name}={_short(value)}")
        return ", ".join(parts)


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return False
    return bool(value == default) and type(value) is type(default)


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, requires_grad={value.requires_grad})"
    if value is not None and not isinstance(value, (bool, int, float, str)):
        return type(value).__name__
    return repr(value)


def declared_fields(options_type: type[LossOptions]) -> list[dataclasses.Field[Any]]:
    """The options in signature order: the loss's own first, then the keyword-only ones."""
    items = dataclasses.fields(options_type)
    return [f for f in items if not f.kw_only] + [f for f in items if f.kw_only]


def options_table(options_type: type[LossOptions]) -> str:
    """The options of a loss as an RST list-table: name, default, meaning.

    Example:
        >>> from nodulebench.losses.functional import SupConOptions
        >>> print(options_table(SupConOptions).splitlines()[0])
        .. list-table:: Options
    """
    lines = [
        ".. list-table:: Options",
        "   :header-rows: 1",
        "   :widths: 20 15 65",
        "",
        "   * - option",
        "     - default",
        "     - meaning",
    ]
    for item in declared_fields(options_type):
        lines += [
            f"   * - ``{item.name}``",
            f"     - ``{item.default!r}``",
            f"     - {item.metadata.get('doc', '')}",
        ]
    return "\n".join(lines)


def with_options_table(doc: str | None, options_type: type[LossOptions]) -> str:
    """``doc`` with the options table inserted before its example (or at its end)."""
    doc = inspect.cleandoc(doc or "")
    table = (
        "Options (declared in :class:`~"
        + options_type.__module__
        + "."
        + options_type.__qualname__
        + "`):\n\n"
        + options_table(options_type)
        + "\n"
    )
    for header in ("\nExample:", "\nExamples:"):
        if header in doc:
            head, tail = doc.split(header, 1)
            return f"{head}\n\n{table}{header}{tail}"
    return f"{doc}\n\n{table}"


def _signature_with_options(
    function: Callable[..., Any], options_type: type[LossOptions]
) -> inspect.Signature:
    """``function``'s signature with ``**options`` replaced by the declared options."""
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind != inspect.Parameter.VAR_KEYWORD
    ]
    hints = typing.get_type_hints(options_type)
    declared = [
        inspect.Parameter(
            item.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=item.default,
            annotation=hints[item.name],
        )
        for item in declared_fields(options_type)
    ]
    return inspect.signature(function).replace(parameters=parameters + declared)


LossFunction = TypeVar("LossFunction", bound=Callable[..., Any])


def functional_form(options_type: type[LossOptions]) -> Callable[[LossFunction], LossFunction]:
    """Give a functional loss that takes ``**options`` the declared options' signature.

    The function is returned unchanged but for its ``__signature__`` (so that
    ``inspect.signature``, ``help`` and the docs list every option with its default)
    and its docstring, which gains the options table.
    """

    def decorate(function: LossFunction) -> LossFunction:
        function.__signature__ = _signature_with_options(  # type: ignore[attr-defined]
            function, options_type
        )
        function.__doc__ = with_options_table(function.__doc__, options_type)
        return function

    return decorate


def constructor_signature(options_type: type[LossOptions]) -> inspect.Signature:
    """The signature of a module built from ``options_type`` (without ``self``)."""
    hints = typing.get_type_hints(options_type)
    parameters = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(options_type).parameters.values()
    ]
    return inspect.Signature(parameters)


# --------------------------------------------------------------------------- pairwise


_REDUCTION_DOC = (
    '``"mean"`` (over valid anchors), ``"sum"`` or ``"none"`` (per anchor, '
    "shape ``(B,)`` or ``(B, V)``)"
)
_BACKEND_DOC = (
    'who computes the per-anchor losses: ``"auto"``, ``"reference"`` (dense), '
    '``"tiled"`` (no ``N x N`` matrix) or ``"triton"`` (CUDA, SupCon only); see '
    ":mod:`nodulebench.kernels.dispatch`"
)


@dataclass(frozen=True)
class EmbeddingOptions(LossOptions):
    """Options every loss on embeddings has, after its own (keyword-only)."""

    normalize: bool = option(True, "L2-normalize each embedding first", check_bool, kw_only=True)
    reduction: str = option("mean", _REDUCTION_DOC, choice(REDUCTIONS), kw_only=True)
    backend: str = option("auto", _BACKEND_DOC, choice(BACKEND_CHOICES), kw_only=True)
    gather_distributed: bool = option(
        False,
        "compute this rank's anchors against the embeddings of all ranks, exact "
        "under DDP's gradient averaging (see :doc:`/scaling`)",
        check_bool,
        kw_only=True,
    )
    process_group: ProcessGroup | None = option(
        None, "the group to gather over; ``None`` means the default group", kw_only=True
    )
    gather_timeout: float | None = option(
        None,
        "seconds to wait at the gather's header exchange for the other ranks before "
        "raising ``TimeoutError`` that names the loss and this rank; ``None`` waits for "
        "the process group's timeout (see :ref:`scaling-timeout`)",
        check_timeout,
        kw_only=True,
    )


@dataclass(frozen=True)
class PairwiseOptions(EmbeddingOptions):
    """Options of a pairwise loss: its own, then those of :class:`EmbeddingOptions`.

    A subclass declares its own options and, as class variables, its registry
    ``name``, ``citation``, whether ``labels_required``, and the kernel that computes
    it (:meth:`kernel` and :meth:`kernel_options`, or an override of :meth:`per_anchor`).
    """

    labels_required: ClassVar[bool] = True

    def kernel(self) -> str:
        """The name of the per-anchor computation (see ``KERNEL_LOSSES``)."""
        raise NotImplementedError(f"{type(self).__name__} names no kernel")

    def kernel_options(self) -> Mapping[str, Any]:
        """The options the kernel takes, by name."""
        return {}

    def per_anchor(self, prepared: PreparedEmbeddings) -> PerAnchor:
        """Per-anchor loss, valid mask and (for sums of several terms) counts."""
        z, labels, where = prepared.kernel_inputs()
        result = run_per_anchor(
            self.kernel(), z, labels, backend=self.backend, **where, **self.kernel_options()
        )
        if len(result) == 3:
            total, counts, valid = result
            return total, valid, counts
        return result[0], result[1], None


def compute_pairwise(
    options: PairwiseOptions,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
) -> ReducedLoss:
    """Prepare the inputs, compute the per-anchor loss, reduce: every pairwise loss."""
    return compute_prepared(options, embeddings, labels, ref_emb=ref_emb, ref_labels=ref_labels)[0]


def compute_prepared(
    options: PairwiseOptions,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None,
    **columns: Any,
) -> tuple[ReducedLoss, PreparedEmbeddings]:
    """:func:`compute_pairwise`, also returning the prepared inputs (for a memory bank).

    ``columns`` are ``ref_emb`` / ``ref_labels`` or ``memory`` of
    ``nodulebench.losses._inputs.prepare_embeddings``.
    """
    prepared = prepare_embeddings(
        embeddings,
        labels,
        normalize=options.normalize,
        labels_required=options.labels_required,
        gather_distributed=options.gather_distributed,
        process_group=options.process_group,
        # The header only where it is exchanged: building it does not trace under compile.
        options=options.header() if options.gather_distributed else None,
        gather_timeout=options.gather_timeout,
        **columns,
    )
    loss, valid, counts = options.per_anchor(prepared)
    reduced = reduce_per_anchor(
        loss, valid, reduction=options.reduction, prepared=prepared, counts=counts
    )
    return reduced, prepared
