"""Compile the Triton SupCon kernels for an H100 (sm_90) on any machine; report resources.

No GPU needed: Triton's bundled ptxas builds the cubin and cuobjdump reads registers,
spill stack and shared memory per kernel. A kernel whose ``stack`` is not 0 spills
registers to local memory, which is slow; the default tile configurations are chosen so
that none does. Run::

    PYTHONPATH=src python benchmarks/triton_compile_report.py [--dims 16 64 128 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from nodulebench.kernels import triton_supcon
from nodulebench.kernels.triton_supcon import KernelConfig, default_config

TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def compile_kernel(
    kind: str,
    dtype: torch.dtype,
    dim: int,
    variant_in: bool,
    config: KernelConfig,
    target: GPUTarget,
) -> Any:
    z = f"*{TRITON_DTYPES[dtype]}"
    block_dim = max(16, int(triton.next_power_of_2(dim)))
    shared = {
        "VARIANT_IN": variant_in,
        "UPCAST": False,
        "DOT_PRECISION": "tf32",
        "BLOCK_D": block_dim,
        "EVEN_D": block_dim == dim,
    }
    if kind == "fwd":
        fn = triton_supcon._supcon_fwd_kernel
        signature = {
            "z_ptr": z,
            "labels_ptr": "*i32",
            "lse_ptr": "*fp32",
            "pos_stat_ptr": "*fp32",
            "n_rows": "i32",
            "dim": "i32",
            "stride_row": "i32",
            "scale_log2": "fp32",
        }
        constants = {**shared, "BLOCK_M": config.fwd_block_rows, "BLOCK_N": config.fwd_block_cols}
        options = {"num_warps": config.fwd_num_warps, "num_stages": config.fwd_num_stages}
    else:
        fn = triton_supcon._supcon_bwd_kernel
        signature = {
            "z_ptr": z,
            "labels_ptr": "*i32",
            "lse_ptr": "*fp32",
            "pos_lse_ptr": "*fp32",
            "coef_ptr": "*fp32",
            "pos_coef_ptr": "*fp32",
            "dz_ptr": z,
            "n_rows": "i32",
            "dim": "i32",
            "stride_row": "i32",
            "stride_dz_row": "i32",
            "scale_log2": "fp32",
            "inv_temperature": "fp32",
        }
        constants = {
            **shared,
            "GRAD_DOT_FP32": dtype != torch.bfloat16,
            "BLOCK_M": config.bwd_block_rows,
            "BLOCK_N": config.bwd_block_cols,
        }
        options = {"num_warps": config.bwd_num_warps, "num_stages": config.bwd_num_stages}
    signature.update(dict.fromkeys(constants, "constexpr"))
    return triton.compile(
        ASTSource(fn, signature, constants),
        target=target,
        options={**options, "enable_fp_fusion": True},
    )


def resources(kernel: Any) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(kernel.asm["cubin"])
    try:
        text = subprocess.run(
            [str(CUOBJDUMP), "-res-usage", cubin.name], check=True, capture_output=True, text=True
        ).stdout
    finally:
        os.unlink(cubin.name)
    found = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump gave no resource line:\n{text}")
    return {
        "registers": int(found[1]),
        "stack": int(found[2]),
        "shared_bytes": int(kernel.metadata.shared),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 128, 200, 256])
    parser.add_argument("--capability", type=int, default=90, help="sm version (90: H100)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    target = GPUTarget("cuda", args.capability, 32)
    rows = []
    for dtype in TRITON_DTYPES:
        for dim in args.dims:
            config = default_config(dtype, dim)
            for variant in ("out", "in"):
                for kind in ("fwd", "bwd"):
                    kernel = compile_kernel(kind, dtype, dim, variant == "in", config, target)
                    row = {
                        "dtype": str(dtype).removeprefix("torch."),
                        "D": dim,
                        "variant": variant,
                        "kernel": kind,
                        **resources(kernel),
                    }
                    rows.append(row)
                    flag = "" if row["stack"] == 0 else "  <-- spills"
                    print(
                        f"{row['dtype']:>8} D={dim:<4} {variant:>3} {kind}  "
                        f"regs {row['registers']:3d}  stack {row['stack']:4d}  "
                        f"smem {row['shared_bytes']:6d}{flag}",
                        flush=True,
                    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
