"""The tiled kernels inside ``torch.compile``: one opaque operator each, no graph break.

A tiled kernel walks row blocks in Python and sizes some temporaries from the data (the
number of classes), which Dynamo cannot trace into one graph. Under compilation each
kernel therefore runs as a custom operator (``torch.library.custom_op``): the graph
holds one node whose output shapes are known from the inputs, and the kernel itself runs
eagerly when the graph runs. Its backward is a second operator that recomputes the
kernel's forward with autograd and differentiates it (the kernel's own recompute
backward) with respect to every floating input, tensor options such as a learnable
scale included, so a compiled step is exact and ``fullgraph=True`` holds. Outside compilation
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


def _decode(options_text: str) -> dict[str, Any]:
    options: dict[str, Any] = ast.literal_eval(options_text)
    return options


def _encode(options: dict[str, Any]) -> str:
    # A Python literal that Dynamo can build from constants while it traces (json cannot).
    return "{" + ", ".join(f"{key!r}: {value!r}" for key, value in sorted(options.items())) + "}"


def _call(
    fn: KernelFunction, tensors: Sequence[torch.Tensor], options_text: str
) -> tuple[torch.Tensor, ...]:
    """``fn`` on the positional tensors, with the tensor options put back by name."""
    options = _decode(options_text)
    # (name, None) for a tensor option, (name, k) for a tuple of k tensors (a reference set).
    names: list[tuple[str, int | None]] = options.pop("__tensor_options__")
    positional = len(tensors) - sum(1 if count is None else count for _, count in names)
    rest = iter(tensors[positional:])
    by_name = {
        name: next(rest) if count is None else tuple(next(rest) for _ in range(count))
        for name, count in names
    }
    return fn(*tensors[:positional], **options, **by_name)


def _tensor_option(value: object) -> bool:
    """Whether an option travels as tensors: a tensor, or a tuple of them."""
    return isinstance(value, torch.Tensor) or (
        isinstance(value, tuple)
        and len(value) > 0
        and all(isinstance(item, torch.Tensor) for item in value)
    )


def _operators(name: str, fn: KernelFunction, outputs: int) -> Callable[..., Any]:
    """Define the forward and backward operators of kernel ``name``."""
    # (loss or total, [count,] valid): the count of batch-all triplets is int64.
    dtypes: Sequence[torch.dtype | None] = (
        (None, torch.int64, torch.bool) if outputs == 3 else (None, torch.bool)
    )

    @torch.library.custom_op(f"nodulebench::{name}", mutates_args=())
    def forward(tensors: list[torch.Tensor], options_text: str) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.clone() for t in _call(fn, tensors, options_text)]

    @forward.register_fake
    def _(tensors: list[torch.Tensor], options_text: str) -> list[torch.Tensor]:
        first = tensors[0]
        row_range = _decode(options_text).get("row_range")
        size = first.shape[0] if row_range is None else row_range[1] - row_range[0]
        return [first.new_empty(size, dtype=dtype or first.dtype) for dtype in dtypes]

    @torch.library.custom_op(f"nodulebench::{name}_backward", mutates_args=())
    def backward(
        tensors: list[torch.Tensor], options_text: str, grad: torch.Tensor
    ) -> list[torch.Tensor]:
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
            value = _call(fn, inputs, options_text)[0]
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(value, wanted, grad, allow_unused=True))
        return [
            _or_zeros(next(grads), t) if t.requires_grad else torch.zeros_like(t) for t in inputs
        ]

    @backward.register_fake
    def _(tensors: list[torch.Tensor], options_text: str, grad: torch.Tensor) -> list[torch.Tensor]:
        return [torch.empty_like(t) for t in tensors]

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        tensors, options_text = inputs
        ctx.save_for_backward(*tensors)
        ctx.options_text = options_text

    def differentiate(ctx: Any, grads: list[torch.Tensor]) -> tuple[Any, ...]:
        tensors = list(ctx.saved_tensors)
        computed = backward(tensors, ctx.options_text, grads[0])
        return [
            g if t.is_floating_point() else None for g, t in zip(computed, tensors, strict=True)
        ], None

    forward.register_autograd(differentiate, setup_context=setup_context)
    return forward


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # A copy: an operator's outputs may not alias each other (a kernel with a reference
    # set returns the gradients of z and ref_z as two views of one matrix).
    return torch.zeros_like(like) if grad is None else grad.clone()


def eager_under_compile(fn: _F) -> _F:
    """Run the tiled kernel ``fn`` eagerly, as one opaque operator under ``torch.compile``.

    ``fn(*tensors, **options)`` must return ``(loss, valid)`` or ``(total, count,
    valid)`` with one entry per anchor (the rows of its first tensor, or ``row_range``),
    differentiable in ``loss``/``total`` only; an option is a tensor (a learnable
    scale), a tuple of tensors (a ``reference`` set) or a Python literal (numbers,
    strings, ``row_range`` pairs).
    """
    outputs = len(typing.get_args(typing.get_type_hints(fn)["return"]))
    operator = _operators(fn.__name__, fn, outputs)

    @functools.wraps(fn)
    def wrapper(*tensors: torch.Tensor, **options: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(*tensors, **options)
        names = sorted(key for key, value in options.items() if _tensor_option(value))
        literals = {key: value for key, value in options.items() if key not in names}
        literals["__tensor_options__"] = [
            (key, None if isinstance(options[key], torch.Tensor) else len(options[key]))
            for key in names
        ]
        extra = [
            t
            for key in names
            for t in ((options[key],) if isinstance(options[key], torch.Tensor) else options[key])
        ]
        return tuple(operator([*tensors, *extra], _encode(literals)))

    return wrapper  # type: ignore[return-value]
