"""A small, strict registry of losses: register, create by name, list, describe.

Example:
    >>> from nodulebench import create_loss, list_losses
    >>> list_losses("sup*")
    ['supcon']
    >>> print(create_loss("supcon", temperature=0.07))
    SupConLoss(temperature=0.07, reduction='mean', backend='auto')
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from nodulebench._validation import check_choice, did_you_mean

__all__ = ["LossInfo", "create_loss", "get_loss_info", "list_losses", "register_loss"]

Consumes = Literal[
    "embeddings", "logits", "paired_embeddings", "embeddings_and_predictions", "logits_and_groups"
]
_CONSUMES: tuple[str, ...] = (
    "embeddings",
    "logits",
    "paired_embeddings",
    "embeddings_and_predictions",
    "logits_and_groups",
)

LossFactory = TypeVar("LossFactory", bound=Callable[..., torch.nn.Module])


@dataclass(frozen=True)
class LossInfo:
    """Metadata of a registered loss.

    Attributes:
        name: the registry name, e.g. ``"supcon"``.
        factory: the class (or callable) that builds the loss module.
        consumes: ``"embeddings"`` (called as ``loss(embeddings, labels)``),
            ``"logits"`` (``loss(logits, targets)``), ``"paired_embeddings"`` (two towers,
            ``loss(image_emb, text_emb)``), ``"embeddings_and_predictions"``
            (``loss(embeddings, labels, predictions)``, a first model's predictions) or
            ``"logits_and_groups"`` (``loss(logits, labels, groups)``, group ids).
        requires_labels: whether labels must be given (``False``: they are optional).
        citation: the paper that defines the loss.
        accepted_kwargs: the keyword arguments :func:`create_loss` accepts.
    """

    name: str
    factory: Callable[..., torch.nn.Module]
    consumes: Consumes
    requires_labels: bool
    citation: str
    accepted_kwargs: tuple[str, ...]


_REGISTRY: dict[str, LossInfo] = {}


def _keyword_parameters(factory: Callable[..., torch.nn.Module]) -> tuple[str, ...]:
    parameters = inspect.signature(factory).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in kinds)


def register_loss(
    name: str,
    *,
    consumes: Consumes,
    requires_labels: bool,
    citation: str,
    override: bool = False,
) -> Callable[[LossFactory], LossFactory]:
    """Class decorator that registers a loss module under ``name``.

    Args:
        name: the registry name; must not be taken yet unless ``override``.
        consumes: what the loss is called with (see :class:`LossInfo`).
        requires_labels: whether the loss needs labels.
        citation: the defining paper, e.g. ``"Khosla et al., NeurIPS 2020"``.
        override: replace a loss already registered under ``name`` (re-running a
            notebook cell that defines it); ``False`` raises instead.

    Returns:
        A decorator that records the factory and returns it unchanged.

    Raises:
        ValueError: ``name`` already registered (without ``override``), empty, or
            unknown ``consumes``.
        TypeError: the factory accepts ``**kwargs`` (it would swallow typos).

    Example:
        >>> import torch
        >>> @register_loss("mean_square", consumes="embeddings", requires_labels=False,
        ...                citation="-", override=True)
        ... class MeanSquare(torch.nn.Module):
        ...     def __init__(self, scale: float = 1.0) -> None:
        ...         super().__init__()
        ...         self.scale = scale
        ...     def forward(self, embeddings, labels=None):
        ...         return self.scale * embeddings.square().mean()
        >>> loss_fn = create_loss("mean_square", scale=0.5)
        >>> print(loss_fn(torch.ones(2, 3)).item())
        0.5
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; got {name!r}")
    check_choice("consumes", consumes, _CONSUMES)
    if not isinstance(requires_labels, bool):
        raise TypeError(f"requires_labels must be a bool; got {type(requires_labels).__name__}")
    if not isinstance(override, bool):
        raise TypeError(f"override must be a bool; got {type(override).__name__}")
    if name in _REGISTRY and not override:
        raise ValueError(
            f"name {name!r} is already registered as "
            f"{_REGISTRY[name].factory.__qualname__}; pass override=True "
            "to replace it"
        )

    def decorator(factory: LossFactory) -> LossFactory:
        parameters = inspect.signature(factory).parameters.values()
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
            raise TypeError(
                f"loss {name!r} must list its options explicitly; "
                "a **kwargs parameter would swallow typos"
            )
        _REGISTRY[name] = LossInfo(
            name=name,
            factory=factory,
            consumes=consumes,
            requires_labels=requires_labels,
            citation=citation,
            accepted_kwargs=_keyword_parameters(factory),
        )
        return factory

    return decorator


def list_losses(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally filtered by an fnmatch pattern.

    Args:
        pattern: e.g. ``"*con*"``; ``None`` lists all.

    Returns:
        The matching names, sorted.
    """
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_loss_info(name: str) -> LossInfo:
    """The metadata of the loss registered under ``name``.

    Raises:
        KeyError: ``name`` is not registered (the message lists those that are and
            names the closest one).

    Example:
        >>> print(get_loss_info("supcon").citation)
        Khosla et al., Supervised Contrastive Learning, NeurIPS 2020
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        registered = ", ".join(repr(n) for n in sorted(_REGISTRY))
        raise KeyError(
            f"name must be a registered loss ({registered}); got {name!r}"
            f"{did_you_mean(name, _REGISTRY)}"
        ) from None


def create_loss(name: str, **kwargs: object) -> torch.nn.Module:
    """Build the loss registered under ``name`` with the given options.

    Args:
        name: a name from :func:`list_losses`.
        **kwargs: options of that loss; anything else is rejected.

    Returns:
        The loss module.

    Raises:
        KeyError: unknown ``name`` (the message lists the registered ones).
        TypeError: an unknown keyword (the message lists the accepted ones).

    Example:
        >>> loss_fn = create_loss("triplet", margin=0.3, mining="all")
        >>> print(loss_fn)
        TripletMarginLoss(margin=0.3, mining='all', reduction='mean', backend='auto')
    """
    info = get_loss_info(name)
    unknown = sorted(set(kwargs) - set(info.accepted_kwargs))
    if unknown:
        accepted = ", ".join(info.accepted_kwargs) or "none"
        hints = "".join(did_you_mean(key, info.accepted_kwargs) for key in unknown)
        raise TypeError(
            f"create_loss({name!r}) got unknown keyword argument(s) "
            f"{', '.join(unknown)}{hints}; accepted: {accepted}"
        )
    return info.factory(**kwargs)
