"""Call every loss of a study once on a tiny batch before any training.

Options that pass the registry's validation can still fail when the loss runs (a
``reduction`` that keeps one value per sample, a kernel backend the device lacks, fewer
groups than the study has) or change training silently (``reduction="sum"`` scales the
step with the batch size). :func:`check_losses_run` finds them before the first run, with
an error naming the study loss, the registry loss and its options.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import STUDY_LOSSES, ConfigError, StudyConfig
from .training import build_losses

#: Samples of the tiny batch: two of each (label x shortcut side) group.
PREFLIGHT_BATCH = 8
#: The study's number of (label x shortcut side) groups (GroupDRO's group ids).
STUDY_GROUPS = 4


def _call(
    study_loss: str, losses: list[torch.nn.Module], config: StudyConfig, device: torch.device
) -> list[tuple[str, torch.Tensor]]:
    """Call each registry loss the way training does; ``(registry name, value)`` pairs."""
    how = STUDY_LOSSES[study_loss]
    b, views = PREFLIGHT_BATCH, how.views
    generator = torch.Generator().manual_seed(0)  # never the global RNG
    labels = torch.arange(b) % 2
    groups = torch.arange(b) % STUDY_GROUPS
    logits_1 = torch.randn(b, 2, generator=generator).to(device).requires_grad_()
    logits_v = torch.randn(b * views, 2, generator=generator).to(device).requires_grad_()
    z = torch.randn(b, views, config.model.projection_dim, generator=generator)
    z = z.to(device).requires_grad_()
    y, y_views = labels.to(device), labels.repeat_interleave(views).to(device)
    values = []
    for name, loss in zip(how.registry, losses, strict=True):
        if how.protocol == "group_dro":
            value = loss(logits_1, y, groups.to(device))
        elif name == "cross_entropy":
            value = loss(logits_v, y_views)
        elif how.protocol == "cnc":
            value = loss(z, y, (1 - labels).to(device))
        else:
            value = loss(z, y if how.uses_labels else None)
        values.append((name, value))
    return values


def check_losses_run(config: StudyConfig, device: torch.device) -> None:
    """Build and call every loss of ``config`` once on a tiny batch on ``device``.

    Each value must be a finite scalar that backpropagates, and a ``reduction`` option
    must be ``"mean"`` (the training step averages over the batch).

    Raises:
        ConfigError: naming the study loss, the registry loss, its options and the fault.
    """
    for study_loss in config.losses:
        for name in STUDY_LOSSES[study_loss].registry:
            options = config.loss_options.get(name, {})
            reduction = options.get("reduction", "mean")
            if reduction != "mean":
                raise ConfigError(
                    f"[loss_options.{name}] reduction must be 'mean' in the study (each "
                    f"training step averages the loss over the batch); got {reduction!r}"
                )
        try:
            values = _call(study_loss, build_losses(config, study_loss), config, device)
        except Exception as err:  # noqa: BLE001 - any failure of a user's options
            raise ConfigError(
                f"loss '{study_loss}' ({_described(config, study_loss)}) fails on a tiny "
                f"batch on {device}, before any training: {type(err).__name__}: {err}"
            ) from err
        for name, value in values:
            fault = _fault(value)
            if fault:
                raise ConfigError(
                    f"loss '{study_loss}': registry loss '{name}' with options "
                    f"{config.loss_options.get(name, {})} {fault} on a tiny batch; the study "
                    "needs one finite scalar per step"
                )
            value.backward()  # type: ignore[no-untyped-call]


def _described(config: StudyConfig, study_loss: str) -> str:
    parts = []
    for name in STUDY_LOSSES[study_loss].registry:
        parts.append(f"{name} with options {config.loss_options.get(name, {})}")
    return "; ".join(parts)


def _fault(value: Any) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"returns {type(value).__name__}, not a tensor"
    if value.dim() != 0:
        return f"returns shape {tuple(value.shape)}, not a scalar"
    if not bool(torch.isfinite(value)):
        return f"returns {float(value)}"
    if not value.requires_grad:
        return "returns a value without a gradient"
    return None
