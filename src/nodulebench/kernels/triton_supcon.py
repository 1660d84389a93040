r"""Fused Triton kernels for SupCon and NT-Xent, forward and backward in O(N * D) memory.

The kernels work on *prepared* inputs: ``z`` (N, D), views already flattened and rows
already L2-normalized, and ``labels`` (N,) already expanded per view (NT-Xent passes the
sample index as the label); :func:`supcon_triton` states the loss.

**Forward.** One program per block of rows streams over column tiles: it computes the
tile :math:`S = Z_{rows} Z_{cols}^\top / \tau` with a tensor-core dot, masks the
self-pair and the padding to :math:`-\infty` inside the tile, builds the positive mask from
the two label vectors, and updates an online log-sum-exp (base 2) plus the positive
statistics (masked sum for ``"out"``, a second online LSE for ``"in"``); :math:`|P(i)|`
comes from a sort of the labels outside the kernel. It saves only O(N) per-row
statistics.

**Backward.** With upstream gradient :math:`g_i` (0 for anchors without positives),
:math:`G_{ij} = \partial L / \partial s_{ij} = g_i (\operatorname{softmax}_{A(i)}(s_i)_j
- w_{ij} [j \in P(i)])` where :math:`w_{ij} = 1/|P(i)|` (``"out"``) or
:math:`\operatorname{softmax}_{P(i)}(s_i)_j` (``"in"``), and since :math:`s` is symmetric,
:math:`\partial L / \partial Z = (G + G^\top) Z / \tau`. One program per row block
recomputes each tile of :math:`S` once and forms *both* :math:`G_{rows,cols}` (from the
row statistics) and :math:`G_{cols,rows}^\top` (from the column statistics, reading the
same symmetric tile), then accumulates :math:`(G + G^\top)_{rows,cols} Z_{cols}`. This is
FlashAttention's dQ pass and dK pass fused into one, with one recomputed :math:`S` tile
instead of two. Each program writes only its own rows of ``dz``: no atomics, and the
summation order is fixed, so results are bitwise reproducible.

Importing this module imports ``triton``; :mod:`nodulebench` itself never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from nodulebench._validation import (
    check_choice,
    check_floating,
    check_integer_tensor,
    check_ndim,
    check_positive,
)
from nodulebench.kernels._triton_utils import (
    TRITON_SUPCON_CAPABILITIES,
    interpreter_enabled,
)

__all__ = ["KernelConfig", "compact_labels", "default_config", "supcon_triton"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of the forward and backward kernels.

    Fixed per (dtype, D) rather than autotuned: a different tile shape changes the
    summation order, and an autotuner's timing-based pick would make results differ
    between runs.

    Attributes:
        fwd_block_rows: rows per forward program.
        fwd_block_cols: columns per forward tile.
        fwd_num_warps: warps per forward program.
        bwd_block_rows: rows per backward program.
        bwd_block_cols: columns per backward tile.
        bwd_num_warps: warps per backward program.
        fwd_num_stages: software-pipelining depth of the forward column loop.
        bwd_num_stages: software-pipelining depth of the backward column loop.
    """

    fwd_block_rows: int = 128
    fwd_block_cols: int = 64
    fwd_num_warps: int = 8
    bwd_block_rows: int = 64
    bwd_block_cols: int = 32
    bwd_num_warps: int = 4
    fwd_num_stages: int = 3
    bwd_num_stages: int = 2


# Chosen so that the sm_90 (H100) build of every kernel fits in 255 registers per thread
# without spilling (checked with cuobjdump -res-usage on the compiled cubin), with the
# largest tiles that allow it. The accumulator of the backward ((rows, D) float32) and
# float32 operands are what limit the tiles.
_CONFIGS = {
    (torch.bfloat16, False): KernelConfig(),
    (torch.float16, False): KernelConfig(bwd_block_rows=32, bwd_block_cols=64),
    (torch.float32, False): KernelConfig(fwd_num_stages=2, bwd_block_rows=32, bwd_block_cols=64),
    (torch.bfloat16, True): KernelConfig(
        fwd_block_rows=64, fwd_block_cols=32, fwd_num_warps=4, bwd_block_rows=32, bwd_block_cols=32
    ),
    (torch.float16, True): KernelConfig(
        fwd_block_rows=64, fwd_block_cols=32, fwd_num_warps=4, bwd_block_rows=32, bwd_block_cols=16
    ),
    (torch.float32, True): KernelConfig(
        fwd_block_rows=64,
        fwd_block_cols=32,
        fwd_num_warps=4,
        fwd_num_stages=2,
        bwd_block_rows=32,
        bwd_block_cols=32,
    ),
}


def default_config(dtype: torch.dtype, dim: int) -> KernelConfig:
    """Return the launch configuration used for embeddings of this dtype and dimension.

    Args:
        dtype: embedding dtype (float32, bfloat16 or float16).
        dim: embedding dimension ``D``.

    Returns:
        The :class:`KernelConfig`; wide rows (``D > 128``) and float32 operands get
        smaller tiles to stay within registers and shared memory.
    """
    return _CONFIGS[(dtype, dim > 128)]


def compact_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relabel to int32 ids ``0..K-1`` and count each row's positives.

    Sort-based, so it needs no device synchronisation and is deterministic; int32 ids
    halve the registers that the in-tile label comparison needs, and counting here
    keeps that work out of the kernel's inner loop.

    Args:
        labels: (N,) integer labels.

    Returns:
        ``(ids, positives)``: (N,) int32 ids, equal exactly where ``labels`` are equal,
        and (N,) int32 :math:`|P(i)|`, the number of other rows with row i's label.
    """
    sorted_labels, order = torch.sort(labels, stable=True)
    starts_group = torch.ones_like(sorted_labels, dtype=torch.int32)
    starts_group[1:] = (sorted_labels[1:] != sorted_labels[:-1]).to(torch.int32)
    group_of_sorted = torch.cumsum(starts_group, 0, dtype=torch.int32) - 1
    group_size_of_sorted = torch.searchsorted(
        sorted_labels, sorted_labels, right=True
    ) - torch.searchsorted(sorted_labels, sorted_labels)
    unsort = torch.argsort(order)
    ids = group_of_sorted[unsort].contiguous()
    positives = (group_size_of_sorted[unsort] - 1).to(torch.int32)
    return ids, positives


@triton.jit
def _supcon_fwd_kernel(  # type: ignore[no-untyped-def]  # Triton reads the annotations
    z_ptr,
    labels_ptr,
    lse_ptr,
    pos_stat_ptr,
    n_rows,
    dim,
    stride_row,
    scale_log2,
    VARIANT_IN: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < n_rows
    dims = tl.arange(0, BLOCK_D)
    if EVEN_D:  # an all-true constant mask lets loads vectorize over whole rows
        dim_in = tl.full([BLOCK_D], 1, tl.int1)
    else:
        dim_in = dims < dim
    q = tl.load(
        z_ptr + rows.to(tl.int64)[:, None] * stride_row + dims[None, :],
        mask=row_in[:, None] & dim_in[None, :],
        other=0.0,
    )
    if UPCAST:  # the CPU interpreter mishandles low-precision dots
        q = q.to(tl.float32)
    row_labels = tl.load(labels_ptr + rows, mask=row_in, other=0)

    # A finite start keeps exp2(m_old - m_new) defined when a whole tile is masked.
    row_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    pos_max = tl.full([BLOCK_M], -1.0e30, tl.float32)
    pos_acc = tl.zeros([BLOCK_M], tl.float32)  # "in": sum of exp2; "out": sum of s
    # 64-bit offsets once, then a 32-bit step per tile: no overflow for N * D >= 2**31.
    k_ptrs = z_ptr + tl.arange(0, BLOCK_N).to(tl.int64)[:, None] * stride_row + dims[None, :]
    for start in range(0, n_rows, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < n_rows
        k = tl.load(k_ptrs, mask=col_in[:, None] & dim_in[None, :], other=0.0)
        k_ptrs += BLOCK_N * stride_row
        if UPCAST:
            k = k.to(tl.float32)
        col_labels = tl.load(labels_ptr + cols, mask=col_in, other=0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        in_a = col_in[None, :] & (rows[:, None] != cols[None, :])
        s = tl.where(in_a, s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, 1))
        row_sum = row_sum * tl.exp2(row_max - new_max) + tl.sum(tl.exp2(s - new_max[:, None]), 1)
        row_max = new_max
        is_pos = in_a & (row_labels[:, None] == col_labels[None, :])
        if VARIANT_IN:
            s_pos = tl.where(is_pos, s, float("-inf"))
            new_pos_max = tl.maximum(pos_max, tl.max(s_pos, 1))
            pos_acc = pos_acc * tl.exp2(pos_max - new_pos_max) + tl.sum(
                tl.exp2(s_pos - new_pos_max[:, None]), 1
            )
            pos_max = new_pos_max
        else:
            pos_acc += tl.sum(tl.where(is_pos, s, 0.0), 1)
    # A non-empty sum is >= 1 (its largest term is exp2(0)); an empty one (no A(i) or
    # no P(i), or padding) is 0 and would give log2(0): clamp to 1, the row is invalid.
    tl.store(lse_ptr + rows, row_max + tl.log2(tl.maximum(row_sum, 1.0)), mask=row_in)
    if VARIANT_IN:
        tl.store(pos_stat_ptr + rows, pos_max + tl.log2(tl.maximum(pos_acc, 1.0)), mask=row_in)
    else:
        tl.store(pos_stat_ptr + rows, pos_acc, mask=row_in)


@triton.jit
def _supcon_bwd_kernel(  # type: ignore[no-untyped-def]  # Triton reads the annotations
    z_ptr,
    labels_ptr,
    lse_ptr,
    pos_lse_ptr,
    coef_ptr,
    pos_coef_ptr,
    dz_ptr,
    n_rows,
    dim,
    stride_row,
    stride_dz_row,
    scale_log2,
    inv_temperature,
    VARIANT_IN: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    GRAD_DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < n_rows
    dims = tl.arange(0, BLOCK_D)
    if EVEN_D:  # an all-true constant mask lets loads vectorize over whole rows
        dim_in = tl.full([BLOCK_D], 1, tl.int1)
    else:
        dim_in = dims < dim
    q = tl.load(
        z_ptr + rows.to(tl.int64)[:, None] * stride_row + dims[None, :],
        mask=row_in[:, None] & dim_in[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    row_labels = tl.load(labels_ptr + rows, mask=row_in, other=0)
    # Anchors that are padding or have no positive carry lse = +inf and coef = 0, so
    # their softmax weights are exactly 0 (never inf * 0).
    row_lse = tl.load(lse_ptr + rows, mask=row_in, other=float("inf"))
    row_coef = tl.load(coef_ptr + rows, mask=row_in, other=0.0)
    row_pos_coef = tl.load(pos_coef_ptr + rows, mask=row_in, other=0.0)
    if VARIANT_IN:
        row_pos_lse = tl.load(pos_lse_ptr + rows, mask=row_in, other=float("inf"))

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # 64-bit offsets once, then a 32-bit step per tile: no overflow for N * D >= 2**31.
    k_ptrs = z_ptr + tl.arange(0, BLOCK_N).to(tl.int64)[:, None] * stride_row + dims[None, :]
    for start in range(0, n_rows, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < n_rows
        k = tl.load(k_ptrs, mask=col_in[:, None] & dim_in[None, :], other=0.0)
        k_ptrs += BLOCK_N * stride_row
        k_dot = k
        if UPCAST:
            k_dot = k.to(tl.float32)
        col_labels = tl.load(labels_ptr + cols, mask=col_in, other=0)
        col_lse = tl.load(lse_ptr + cols, mask=col_in, other=float("inf"))
        col_coef = tl.load(coef_ptr + cols, mask=col_in, other=0.0)
        col_pos_coef = tl.load(pos_coef_ptr + cols, mask=col_in, other=0.0)
        s = tl.dot(q, tl.trans(k_dot), input_precision=DOT_PRECISION) * scale_log2
        in_a = row_in[:, None] & col_in[None, :] & (rows[:, None] != cols[None, :])
        is_pos = in_a & (row_labels[:, None] == col_labels[None, :])
        # Masking s (not the products) keeps every exp2 argument <= 0 up to rounding:
        # no overflow, no inf * 0.
        s = tl.where(in_a, s, float("-inf"))
        # G[rows, cols] from the row anchors plus G[cols, rows]^T from the column
        # anchors: s is symmetric, so the same tile serves both.
        grad = row_coef[:, None] * tl.exp2(s - row_lse[:, None]) + col_coef[None, :] * tl.exp2(
            s - col_lse[None, :]
        )
        if VARIANT_IN:
            col_pos_lse = tl.load(pos_lse_ptr + cols, mask=col_in, other=float("inf"))
            s_pos = tl.where(is_pos, s, float("-inf"))
            grad -= row_pos_coef[:, None] * tl.exp2(s_pos - row_pos_lse[:, None]) + col_pos_coef[
                None, :
            ] * tl.exp2(s_pos - col_pos_lse[None, :])
        else:
            grad -= tl.where(is_pos, row_pos_coef[:, None] + col_pos_coef[None, :], 0.0)
        if GRAD_DOT_FP32:
            # fp16 would flush the tiny entries of G (~1/N^2) to zero: use TF32 instead.
            acc += tl.dot(grad, k.to(tl.float32), input_precision=DOT_PRECISION)
        else:
            grad_low = grad.to(z_ptr.dtype.element_ty)
            if UPCAST:
                acc += tl.dot(grad_low.to(tl.float32), k_dot)
            else:
                acc += tl.dot(grad_low, k)
    dz = acc * inv_temperature
    tl.store(
        dz_ptr + rows.to(tl.int64)[:, None] * stride_dz_row + dims[None, :],
        dz.to(dz_ptr.dtype.element_ty),
        mask=row_in[:, None] & dim_in[None, :],
    )


def _block_dim(dim: int) -> int:
    # tl.arange needs a power of two; tl.dot needs at least 16.
    return max(16, int(triton.next_power_of_2(dim)))


def _dot_precision(dtype: torch.dtype, precision: str) -> str:
    return precision if dtype == torch.float32 else "tf32"  # ignored for 16-bit operands


class _SupConTriton(torch.autograd.Function):
    """Autograd wrapper: forward and backward kernels, O(N) saved statistics."""

    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        label_ids: torch.Tensor,
        positives: torch.Tensor,
        temperature: float,
        variant: str,
        precision: str,
        config: KernelConfig,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows, dim = z.shape
        lse2 = torch.empty(n_rows, device=z.device, dtype=torch.float32)
        pos_stat2 = torch.empty_like(lse2)
        variant_in = variant == "in"
        grid = (triton.cdiv(n_rows, config.fwd_block_rows),)
        _supcon_fwd_kernel[grid](
            z,
            label_ids,
            lse2,
            pos_stat2,
            n_rows,
            dim,
            z.stride(0),
            _LOG2E / temperature,
            VARIANT_IN=variant_in,
            UPCAST=interpreter_enabled(),
            DOT_PRECISION=_dot_precision(z.dtype, precision),
            BLOCK_M=config.fwd_block_rows,
            BLOCK_N=config.fwd_block_cols,
            BLOCK_D=_block_dim(dim),
            EVEN_D=_block_dim(dim) == dim,
            num_warps=config.fwd_num_warps,
            num_stages=config.fwd_num_stages,
            enable_fp_fusion=True,
        )
        valid = positives > 0
        count = positives.to(torch.float32).clamp_min(1.0)
        if variant_in:
            loss = _LN2 * (lse2 - pos_stat2) + torch.log(count)
        else:
            loss = _LN2 * (lse2 - pos_stat2 / count)
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        ctx.save_for_backward(z, label_ids, lse2, pos_stat2, count, valid)
        ctx.temperature = temperature
        ctx.variant_in = variant_in
        ctx.precision = precision
        ctx.config = config
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_loss: torch.Tensor, grad_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        z, label_ids, lse2, pos_stat2, count, valid = ctx.saved_tensors
        config: KernelConfig = ctx.config
        inf = torch.full_like(lse2, math.inf)
        coef = torch.where(valid, grad_loss.to(torch.float32), torch.zeros_like(lse2))
        lse_bwd = torch.where(valid, lse2, inf).contiguous()
        if ctx.variant_in:
            pos_lse_bwd = torch.where(valid, pos_stat2, inf).contiguous()
            pos_coef = coef
        else:
            pos_lse_bwd = lse_bwd  # unused by the "out" kernel
            pos_coef = coef / count
        n_rows, dim = z.shape
        dz = torch.empty_like(z)
        grid = (triton.cdiv(n_rows, config.bwd_block_rows),)
        _supcon_bwd_kernel[grid](
            z,
            label_ids,
            lse_bwd,
            pos_lse_bwd,
            coef.contiguous(),
            pos_coef.contiguous(),
            dz,
            n_rows,
            dim,
            z.stride(0),
            dz.stride(0),
            _LOG2E / ctx.temperature,
            1.0 / ctx.temperature,
            VARIANT_IN=ctx.variant_in,
            UPCAST=interpreter_enabled(),
            DOT_PRECISION=_dot_precision(z.dtype, ctx.precision),
            GRAD_DOT_FP32=z.dtype != torch.bfloat16,
            BLOCK_M=config.bwd_block_rows,
            BLOCK_N=config.bwd_block_cols,
            BLOCK_D=_block_dim(dim),
            EVEN_D=_block_dim(dim) == dim,
            num_warps=config.bwd_num_warps,
            num_stages=config.bwd_num_stages,
            enable_fp_fusion=True,
        )
        return dz, None, None, None, None, None, None


# Dynamo would trace into the kernel launches (and, under the CPU interpreter, into
# Triton's NumPy emulation) and fail; a graph break here is the supported behaviour.
@torch.compiler.disable
def supcon_triton(
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    variant: str = "out",
    precision: str = "tf32",
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-anchor SupCon loss with fused Triton kernels (differentiable in ``z``).

    With :math:`s_{ij} = z_i \cdot z_j / \tau`, :math:`A(i) = \{j \ne i\}` and
    :math:`P(i) = \{p \in A(i) : y_p = y_i\}`:

    .. math::

        \ell^{out}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
                       - \frac{1}{|P(i)|} \sum_{p \in P(i)} s_{ip},
        \qquad
        \ell^{in}_i = \operatorname{LSE}_{a \in A(i)} s_{ia}
                      - \operatorname{LSE}_{p \in P(i)} s_{ip} + \log |P(i)|,

    and :math:`\ell_i = 0` where :math:`P(i)` is empty. No :math:`N \times N` matrix is
    ever held: memory is O(N * D) in the forward and the backward.

    Args:
        z: (N, D) prepared embeddings: views flattened sample-major and rows already
            L2-normalized; float32, bfloat16 or float16; ``D <= 256``; on CUDA (or on
            the CPU under ``TRITON_INTERPRET=1``).
        labels: (N,) integer labels, one per row (for NT-Xent, the sample index).
        temperature: :math:`\tau > 0`.
        variant: ``"out"`` (default, :math:`\mathcal{L}^{sup}_{out}`) or ``"in"``.
        precision: dot precision for float32 inputs: ``"tf32"`` (default, tensor cores),
            ``"tf32x3"`` (close to float32 at about three times the cost) or ``"ieee"``.
            Ignored for 16-bit inputs, whose products are exact in float32.
        config: tile sizes; ``None`` uses :func:`default_config`.

    Returns:
        ``(loss, valid)``: ``loss`` (N,) float32, exactly 0 for anchors without
        positives; ``valid`` (N,) bool, whether anchor i has a positive.

    Raises:
        TypeError: if ``z`` is not a floating tensor or ``labels`` not an integer tensor.
        ValueError: for shapes, devices, dtypes, ``D``, ``variant``, ``precision`` or
            ``temperature`` the kernels do not serve.

    Example:
        >>> raw = torch.randn(8, 32, device="cuda")  # doctest: +SKIP
        >>> z = torch.nn.functional.normalize(raw, dim=1)  # doctest: +SKIP
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], device="cuda")  # doctest: +SKIP
        >>> loss, valid = supcon_triton(z, labels, temperature=0.1)  # doctest: +SKIP
        >>> print(valid.tolist())  # doctest: +SKIP
        [True, True, True, True, True, True, True, True]
    """
    caps = TRITON_SUPCON_CAPABILITIES
    check_ndim("z", z, (2,), "(N, D)")
    check_floating("z", z)
    check_ndim("labels", labels, (1,), "(N,)")
    check_integer_tensor("labels", labels)
    check_positive("temperature", temperature)
    check_choice("variant", variant, caps.variants)
    check_choice("precision", precision, caps.fp32_precisions)
    n_rows, dim = z.shape
    if z.dtype not in caps.dtypes:
        raise ValueError(f"z must have dtype in {caps.dtypes}; got {z.dtype}")
    if n_rows == 0 or dim == 0:
        raise ValueError(f"z must have at least one row and one column; got {tuple(z.shape)}")
    if dim > caps.max_dim:
        raise ValueError(f"z must have at most {caps.max_dim} columns (D); got D={dim}")
    if labels.shape[0] != n_rows:
        raise ValueError(
            f"labels must have one entry per row of z ({n_rows}); got {labels.shape[0]}"
        )
    if labels.device != z.device:
        raise ValueError(f"labels must be on z's device {z.device}; got {labels.device}")
    if z.device.type == "cpu" and not interpreter_enabled():
        raise ValueError(
            "z on device 'cpu' needs TRITON_INTERPRET=1; got a CPU tensor "
            "without it (use the 'tiled' backend on the CPU)"
        )
    if z.device.type not in caps.devices:
        raise ValueError(f"z must be on one of {caps.devices}; got {z.device}")
    outputs: tuple[torch.Tensor, torch.Tensor] = _SupConTriton.apply(  # type: ignore[no-untyped-call]
        z.contiguous(),
        *compact_labels(labels),
        float(temperature),
        variant,
        precision,
        config if config is not None else default_config(z.dtype, dim),
    )
    return outputs
