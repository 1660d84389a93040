"""What the Triton SupCon backend can serve, readable without importing Triton.

:data:`TRITON_SUPCON_CAPABILITIES` is the one declaration: the dispatcher's ``"triton"``
:class:`~nodulebench.kernels.dispatch.BackendInfo` is built from it and decides, with
:func:`interpreter_enabled`, whether ``backend="triton"`` can serve a call. Nothing here
imports ``triton``: the check for its presence uses :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from nodulebench.kernels._dense import SUPCON_VARIANTS

__all__ = [
    "TRITON_SUPCON_CAPABILITIES",
    "KernelTolerance",
    "TritonCapabilities",
    "interpreter_enabled",
    "triton_is_installed",
]


@dataclass(frozen=True)
class KernelTolerance:
    """How far a kernel's results may lie from the float64 reference, per input dtype.

    Losses are compared element-wise with ``|loss - ref| <= loss_atol + loss_rtol * |ref|``;
    gradients relative to their largest entry, ``max|grad - ref| <= grad_rel * max|ref|``,
    because the gradient's scale follows the reduction and the batch size.

    Attributes:
        loss_atol: absolute tolerance on each per-anchor loss.
        loss_rtol: relative tolerance on each per-anchor loss.
        grad_rel: tolerance on the gradient, relative to its largest absolute entry.
    """

    loss_atol: float
    loss_rtol: float
    grad_rel: float


@dataclass(frozen=True)
class TritonCapabilities:
    """The inputs and options a Triton kernel family accepts.

    Attributes:
        name: backend name used by the dispatcher.
        devices: device types served; ``"cpu"`` only under ``TRITON_INTERPRET=1``.
        dtypes: embedding dtypes accepted (accumulation is always float32).
        max_dim: largest embedding dimension ``D``.
        variants: SupCon variants implemented.
        fp32_precisions: ``precision`` values for float32 inputs (``"tf32"`` by default).
        deterministic: whether repeated calls give bitwise identical results.
        tolerances: per-dtype tolerances against the float64 reference on CUDA with the
            default precision.
    """

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    max_dim: int
    variants: tuple[str, ...]
    fp32_precisions: tuple[str, ...]
    deterministic: bool
    tolerances: Mapping[torch.dtype, KernelTolerance]


TRITON_SUPCON_CAPABILITIES = TritonCapabilities(
    name="triton",
    devices=("cuda", "cpu"),
    dtypes=(torch.float32, torch.bfloat16, torch.float16),
    max_dim=256,
    variants=SUPCON_VARIANTS,
    fp32_precisions=("tf32", "tf32x3", "ieee"),
    deterministic=True,
    tolerances={
        # TF32 rounds each operand to 10 mantissa bits: |error of s_ij| ~ 5e-4 / tau.
        torch.float32: KernelTolerance(loss_atol=2e-2, loss_rtol=2e-3, grad_rel=2e-2),
        # Products of bf16/fp16 inputs are exact in the float32 accumulator; the
        # gradient tile is rounded to the input dtype before the second matmul and dz
        # is returned in the input dtype.
        torch.bfloat16: KernelTolerance(loss_atol=2e-3, loss_rtol=2e-3, grad_rel=3e-2),
        torch.float16: KernelTolerance(loss_atol=2e-3, loss_rtol=2e-3, grad_rel=1e-2),
    },
)


def triton_is_installed() -> bool:
    """Return whether the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """Return whether ``TRITON_INTERPRET`` asks Triton to run kernels on the CPU.

    Read as Triton reads it: ``1``, ``true``, ``on`` or ``yes`` (any case) turn it on;
    unset, empty, ``0``, ``false`` or ``off`` leave it off.
    """
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


_TRUTHY = frozenset({"1", "true", "on", "yes", "y"})
