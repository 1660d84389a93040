"""One-shot GPU check of the Triton SupCon kernels; writes JSON to ``$OUT`` and a table.

Run on a CUDA machine (about two minutes on one H100)::

    PYTHONPATH=src python benchmarks/gpu_check.py --out "$OUT"

It records, for the device it runs on:

- correctness against a float64 dense reference at B = 4096, D = 128, both variants,
  float32 (TF32) / bfloat16 / float16: max loss error and gradient error relative to the
  largest gradient entry, with the declared tolerance;
- SupCon forward+backward median time at B = 32768, D = 128 for bfloat16 and float32, the
  extra memory (peak allocated above the inputs) and whether two runs are bitwise equal;
- a small sweep of tile configurations at that size (to choose the defaults);
- forward+backward at B = 1,048,576 (bfloat16) completes, with its time.

``--dry-run`` runs the same code path at tiny sizes on the CPU under the Triton
interpreter (it sets ``TRITON_INTERPRET=1`` itself), so the script's logic is tested
without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

SIZES = {"check": 4096, "time": 32768, "huge": 1_048_576, "reps": 20}
DRY_SIZES = {"check": 70, "time": 96, "huge": 160, "reps": 2}
DIM = 128
# Candidate tiles at B = 32768, D = 128 (the first of each is the default); all compile
# for sm_90 without register spills (benchmarks/triton_compile_report.py).
SWEEP = {
    "bfloat16": [
        {},
        {"bwd_block_rows": 32, "bwd_block_cols": 64},
        {"fwd_block_cols": 32},
        {"fwd_block_rows": 64, "fwd_num_warps": 4, "bwd_num_stages": 3},
    ],
    "float32": [
        {"fwd_num_stages": 2, "bwd_block_rows": 32, "bwd_block_cols": 64},
        {"fwd_block_cols": 32, "fwd_num_stages": 2, "bwd_block_rows": 32, "bwd_block_cols": 64},
        {
            "fwd_block_rows": 64,
            "fwd_block_cols": 32,
            "fwd_num_warps": 4,
            "fwd_num_stages": 2,
            "bwd_block_rows": 32,
            "bwd_block_cols": 32,
        },
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT", "."),
        help="folder for triton_supcon_gpu_check.json (default: $OUT or .)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile sweep")
    parser.add_argument("--no-huge", action="store_true", help="skip B = 1,048,576")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
    import torch
    import triton

    from nodulebench.kernels._triton_utils import TRITON_SUPCON_CAPABILITIES
    from nodulebench.kernels.triton_supcon import KernelConfig, default_config, supcon_triton

    if args.dry_run:
        device, sizes = torch.device("cpu"), DRY_SIZES
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), SIZES
    else:
        sys.exit("no CUDA device: run with --dry-run to check the script on the CPU")
    gen = torch.Generator(device=device).manual_seed(0)

    def unit_rows(n_rows: int, dtype: torch.dtype) -> torch.Tensor:
        z = torch.randn(n_rows, DIM, device=device, generator=gen)
        return torch.nn.functional.normalize(z, dim=1).to(dtype)

    def labels_for(n_rows: int) -> torch.Tensor:
        classes = max(2, n_rows // 32)  # ~32 rows per class, a few singletons at small N
        return torch.randint(0, classes, (n_rows,), device=device, generator=gen)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fwd_bwd(
        z: torch.Tensor, labels: torch.Tensor, variant: str = "out", config: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        loss, valid = supcon_triton(z, labels, temperature=0.1, variant=variant, config=config)
        loss.sum().div(valid.sum().clamp_min(1)).backward()
        assert z.grad is not None
        return loss.detach(), z.grad

    def median_ms(fn: Callable[[], object], reps: int) -> float:
        fn()  # compile and warm up
        times = []
        for _ in range(reps):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def reference(z: torch.Tensor, labels: torch.Tensor, variant: str) -> torch.Tensor:
        z = z.to(torch.float64)
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=device)
        sim = (z @ z.T / 0.1).masked_fill(eye, -math.inf)
        positive = (labels[:, None] == labels[None, :]) & ~eye
        count = positive.sum(1)
        lse_all = torch.logsumexp(sim, 1)
        if variant == "out":
            loss = lse_all - sim.masked_fill(~positive, 0.0).sum(1) / count.clamp_min(1)
        else:
            loss = (
                lse_all
                - torch.logsumexp(sim.masked_fill(~positive, -math.inf), 1)
                + torch.log(count.clamp_min(1).to(torch.float64))
            )
        return torch.where(count > 0, loss, torch.zeros_like(loss))

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU interpreter ({platform.processor() or platform.machine()})",
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dim": DIM,
        "temperature": 0.1,
        "correctness": [],
        "timing": [],
        "sweep": [],
    }
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

    n_check = sizes["check"]
    labels = labels_for(n_check)
    for variant in ("out", "in"):
        for dtype_name, dtype in dtypes.items():
            z = unit_rows(n_check, dtype)
            loss, grad = fwd_bwd(z, labels, variant)
            z_ref = z.to(torch.float64).requires_grad_(True)
            loss_ref = reference(z_ref, labels, variant)
            valid_ref = loss_ref != 0
            loss_ref.sum().div(valid_ref.sum().clamp_min(1)).backward()
            assert z_ref.grad is not None
            tol = TRITON_SUPCON_CAPABILITIES.tolerances[dtype]
            loss_err = (loss.to(torch.float64) - loss_ref.detach()).abs().max().item()
            grad_rel = (
                (grad.to(torch.float64) - z_ref.grad).abs().max() / z_ref.grad.abs().max()
            ).item()
            report["correctness"].append(
                {
                    "B": n_check,
                    "variant": variant,
                    "dtype": dtype_name,
                    "max_loss_abs_err": loss_err,
                    "grad_rel_err": grad_rel,
                    "loss_atol": tol.loss_atol,
                    "grad_rel_tol": tol.grad_rel,
                    "ok": loss_err <= tol.loss_atol + tol.loss_rtol * loss_ref.abs().max().item()
                    and grad_rel <= tol.grad_rel,
                }
            )

    n_time = sizes["time"]
    labels = labels_for(n_time)
    for variant, dtype_name in (
        ("out", "bfloat16"),
        ("out", "float32"),
        ("out", "float16"),
        ("in", "bfloat16"),
    ):
        z = unit_rows(n_time, dtypes[dtype_name])
        ms = median_ms(lambda: fwd_bwd(z, labels, variant), sizes["reps"])  # noqa: B023
        extra_bytes = None
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            first = fwd_bwd(z, labels, variant)
            sync()
            extra_bytes = torch.cuda.max_memory_allocated() - base
        else:
            first = fwd_bwd(z, labels, variant)
        second = fwd_bwd(z, labels, variant)
        report["timing"].append(
            {
                "B": n_time,
                "D": DIM,
                "variant": variant,
                "dtype": dtype_name,
                "config": asdict(default_config(dtypes[dtype_name], DIM)),
                "fwd_bwd_ms": ms,
                "extra_bytes": extra_bytes,
                "bitwise_deterministic": bool(
                    torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
                ),
            }
        )

    if not args.no_sweep:
        for dtype_name, candidates in SWEEP.items():
            z = unit_rows(n_time, dtypes[dtype_name])
            for overrides in candidates:
                config = KernelConfig(**overrides)
                try:
                    ms = median_ms(
                        lambda: fwd_bwd(z, labels, "out", config),  # noqa: B023
                        sizes["reps"],
                    )
                    entry: dict[str, Any] = {"fwd_bwd_ms": ms}
                except Exception as exc:  # e.g. out of shared memory: record, go on
                    entry = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                report["sweep"].append({"dtype": dtype_name, "config": asdict(config), **entry})

    if not args.no_huge:
        n_huge = sizes["huge"]
        z = unit_rows(n_huge, torch.bfloat16)
        labels = labels_for(n_huge)
        sync()
        start = time.perf_counter()
        loss, grad = fwd_bwd(z, labels)
        sync()
        report["huge"] = {
            "B": n_huge,
            "D": DIM,
            "dtype": "bfloat16",
            "seconds": time.perf_counter() - start,
            "finite": bool(torch.isfinite(loss).all() and torch.isfinite(grad).all()),
        }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_supcon_gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"device: {report['device']}")
    for row in report["correctness"]:
        print(
            f"check  B={row['B']:>7} {row['variant']:>3} {row['dtype']:>8}  "
            f"loss err {row['max_loss_abs_err']:.2e}  grad rel {row['grad_rel_err']:.2e}  "
            f"{'ok' if row['ok'] else 'FAIL'}"
        )
    for row in report["timing"]:
        mib = "n/a" if row["extra_bytes"] is None else f"{row['extra_bytes'] / 2**20:.1f} MiB"
        print(
            f"time   B={row['B']:>7} {row['variant']:>3} {row['dtype']:>8}  "
            f"{row['fwd_bwd_ms']:8.2f} ms  extra {mib}  "
            f"deterministic {row['bitwise_deterministic']}"
        )
    for row in report["sweep"]:
        print(
            f"sweep  {row['dtype']:>8} {tuple(row['config'].values())}  "
            f"{row.get('fwd_bwd_ms', row.get('error'))}"
        )
    if "huge" in report:
        print(
            f"huge   B={report['huge']['B']} {report['huge']['seconds']:.2f} s "
            f"finite {report['huge']['finite']}"
        )


if __name__ == "__main__":
    main()
