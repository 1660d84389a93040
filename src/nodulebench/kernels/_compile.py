"""The tiled kernels inside ``torch.compile``: one opaque operator each, no graph break.

A tiled kernel walks row blocks in Python and sizes some temporaries from the data (the
number of classes), which Dynamo cannot trace into one graph. Under compilation each
kernel therefore runs as a custom operator (``torch.library.custom_op``): the graph
holds one node whose output shapes are known from the inputs, and the kernel itself runs
eagerly when the graph runs. Its backward is a second operator that recomputes the
kernel's forward with autograd and differentiates it (the kernel's own recompute
backward), so a compiled step is exact and ``fullgraph=True`` holds. Outside compilation
the kernel is called directly, as before.

Defining the operators imports neither Dynamo nor Triton, so ``import nodulebench`` stays
light.
"""

from __future__ import annotations

import ast
import functools
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["eager_under_compile"]

_F = TypeVar("_F", bound=Callable[..., Any])

KernelFunction = Callable[..., tuple[torch.Tensor, ...]]


def _anchors(z: torch.Tensor, options: dict[str, Any]) -> int:
    row_range = options.get("row_range")
    return z.shape[0] if row_range is None else row_range[1] - row_range[0]


def _encode(options: dict[str, Any]) -> str:
    # A Python literal that Dynamo can build from constants while it traces (json cannot).
    return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in sorted(options.items())) + "}"


def _decode(options_text: str) -> dict[str, Any]:
    options: dict[str, Any] = ast.literal_eval(options_text)
    return options


def _operators(name: str, fn: KernelFunction, outputs: int) -> Callable[..., Any]:
    """Define the forward and backward operators of kernel ``name``."""
    # (loss or total, [count,] valid): the count of batch-all triplets is int64.
    dtypes: Sequence[torch.dtype | None] = (
        (None, torch.int64, torch.bool) if outputs == 3 else (None, torch.bool)
    )

    @torch.library.custom_op(f"nodulebench::{name}", mutates_args=())
    def forward(z: torch.Tensor, labels: torch.Tensor, options_text: str) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.clone() for t in fn(z, labels, **_decode(options_text))]

    @forward.register_fake
    def _(z: torch.Tensor, labels: torch.Tensor, options_text: str) -> list[torch.Tensor]:
        size = _anchors(z, _decode(options_text))
        return [z.new_empty(size, dtype=dtype or z.dtype) for dtype in dtypes]

    @torch.library.custom_op(f"nodulebench::{name}_backward", mutates_args=())
    def backward(z: torch.Tensor, labels: torch.Tensor, options_text: str,
                 grad: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            rows = z.detach().requires_grad_(True)
            value = fn(rows, labels, **_decode(options_text))[0]
            (grad_z,) = torch.autograd.grad(value, rows, grad)
        return grad_z

    @backward.register_fake
    def _(z: torch.Tensor, labels: torch.Tensor, options_text: str,
          grad: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(z)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        z, labels, options_text = inputs
        ctx.save_for_backward(z, labels)
        ctx.options_text = options_text

    def differentiate(ctx: Any, grads: list[torch.Tensor]) -> tuple[Any, ...]:
        z, labels = ctx.saved_tensors
        return backward(z, labels, ctx.options_text, grads[0]), None, None

    forward.register_autograd(differentiate, setup_context=setup_context)
    return forward


def eager_under_compile(fn: _F) -> _F:
    """Run the tiled kernel ``fn`` eagerly, as one opaque operator under ``torch.compile``.

    ``fn(z, labels, **options)`` must return ``(loss, valid)`` or ``(total, count,
    valid)`` with one entry per anchor, differentiable in ``loss``/``total`` only; its
    options must be Python literals (numbers, strings, ``row_range`` pairs).
    """
    outputs = len(typing.get_args(typing.get_type_hints(fn)["return"]))
    operator = _operators(fn.__name__, fn, outputs)

    @functools.wraps(fn)
    def wrapper(z: torch.Tensor, labels: torch.Tensor, **options: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(z, labels, **options)
        return tuple(operator(z, labels, _encode(options)))

    return wrapper  # type: ignore[return-value]
