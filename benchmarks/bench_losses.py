"""Forward + backward time and peak extra memory of the pairwise losses, per backend.

For each loss, backend and batch size B this writes one JSON line (loss, backend, B, D,
dtype, device, ms, peak_bytes) and prints a table. Backends: ``dense`` (the usual B x B
recipe, see ``_harness.py``), ``compiled`` (``torch.compile`` of it), ``reference``,
``tiled`` and ``triton`` (through :func:`nodulebench.kernels.run_per_anchor`) and ``pml``
(pytorch-metric-learning, when installed). Inputs are prepared as the losses prepare them:
rows L2-normalized, labels drawn from ``--num-classes`` classes.

Quick CPU run::

    PYTHONPATH=src python benchmarks/bench_losses.py --sizes 512 1024 --repeats 2

The target check of the tiled engine on CPU (SupCon, D = 128, float32, B = 8192)::

    PYTHONPATH=src python benchmarks/bench_losses.py --losses supcon \
        --backends dense tiled --sizes 8192 --repeats 3

``--crossover`` measures, per loss, the smallest B at which ``tiled`` beats ``dense``.

The two-tower losses (``clip``, ``siglip``) take B pairs: both towers ``(B, D)`` get
gradients; their ``dense`` row is the reference backend (``B x B`` logits, the usual
recipe) and ``pml`` does not apply.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from _harness import DENSE, device_name, forward_backward, median_ms, peak_extra_bytes
from nodulebench.kernels import KERNEL_LOSSES, TWO_TOWER_LOSSES, run_per_anchor, run_two_tower
from nodulebench.threads import set_threads

OPTIONS: dict[str, dict[str, object]] = {
    "supcon": {"temperature": 0.1, "variant": "out"},
    "contrastive": {"margin": 1.0},
    "contrastive_pml": {"pos_margin": 0.0, "neg_margin": 1.0},
    "triplet_hard": {"margin": 0.2, "distance": "euclidean"},
    "triplet_all": {"margin": 0.2, "distance": "euclidean"},
    "triplet_semihard": {"margin": 0.2, "distance": "euclidean"},
    "multi_similarity": {},
    # Two-tower scalars: CLIP's initial scale 1 / 0.07, SigLIP's initial t = 10, b = -10.
    "clip": {"scale": 1 / 0.07},
    "siglip": {"scale": 10.0, "bias": -10.0},
}
LOSSES = KERNEL_LOSSES + TWO_TOWER_LOSSES
BACKENDS = ("dense", "compiled", "reference", "tiled", "triton", "pml")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

PerAnchor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dense_bytes_estimate(loss: str, n: int, element_size: int) -> int:
    """Rough peak of the dense recipe, to skip sizes that cannot fit."""
    if loss == "triplet_all":
        return 3 * n**3 * element_size
    return 8 * n * n * element_size


def pml_loss(loss: str) -> PerAnchor | None:
    """A pytorch-metric-learning loss with our options, when the package is installed."""
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        return None
    from pytorch_metric_learning import losses, miners  # noqa: PLC0415

    if loss == "supcon":
        fn = losses.SupConLoss(temperature=0.1)
    elif loss in ("contrastive", "contrastive_pml"):
        fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    elif loss == "triplet_all":
        fn = losses.TripletMarginLoss(margin=0.2)
    elif loss == "triplet_hard":
        miner = miners.BatchHardMiner()
        base = losses.TripletMarginLoss(margin=0.2)
        return lambda z, y: base(z, y, miner(z, y))[None]
    elif loss == "multi_similarity":
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
        base = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
        return lambda z, y: base(z, y, miner(z, y))[None]
    else:
        return None
    return lambda z, y: fn(z, y)[None]


def two_tower_fn(loss: str, backend: str) -> PerAnchor:
    """Per-pair losses of the towers side by side in ``z`` of shape ``(B, 2 D)``."""

    def fn(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if backend == "pml":
            raise ValueError("pytorch-metric-learning has no two-tower loss")
        image, text = z.chunk(2, dim=1)
        scalars = {
            key: torch.tensor(value, dtype=z.dtype, device=z.device)
            for key, value in OPTIONS[loss].items()
        }
        chosen = "reference" if backend in ("dense", "compiled") else backend
        return run_two_tower(loss, image, text, backend=chosen, **scalars)[0]

    return torch.compile(fn) if backend == "compiled" else fn


def per_anchor_fn(loss: str, backend: str) -> PerAnchor | None:
    """The function a backend row measures, or None when it is unavailable."""
    if loss in TWO_TOWER_LOSSES:
        return two_tower_fn(loss, backend)
    if backend in ("dense", "compiled"):
        if loss not in DENSE:
            return None
        dense = DENSE[loss]
        return torch.compile(dense) if backend == "compiled" else dense
    if backend == "pml":
        return pml_loss(loss)
    options = OPTIONS[loss]
    return lambda z, y: run_per_anchor(loss, z, y, backend=backend, **options)[0]


def make_inputs(
    n: int, dim: int, num_classes: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return z.to(device=device, dtype=dtype), labels.to(device)


def measure(
    loss: str, backend: str, n: int, args: argparse.Namespace, device: torch.device
) -> dict[str, object]:
    dtype = DTYPES[args.dtype]
    width = 2 * args.dim if loss in TWO_TOWER_LOSSES else args.dim  # both towers
    z, labels = make_inputs(n, width, args.num_classes, dtype, device)
    if backend != "triton" and dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # the losses upcast low precision before the maths
    record: dict[str, object] = {
        "loss": loss,
        "backend": backend,
        "B": n,
        "D": args.dim,
        "dtype": args.dtype,
        "device": device_name(device),
        "ms": None,
        "peak_bytes": None,
        "note": "",
    }
    fn = per_anchor_fn(loss, backend)
    if fn is None:
        record["note"] = "not installed" if backend == "pml" else "no such recipe"
        return record
    if backend in ("dense", "compiled", "pml") and (
        dense_bytes_estimate(loss, n, z.element_size()) > args.max_dense_bytes
    ):
        record["note"] = "skipped: dense matrices exceed --max-dense-bytes"
        return record
    try:
        step = forward_backward(fn, z, labels)
        record["ms"] = round(median_ms(step, device, args.repeats), 3)
        record["peak_bytes"] = peak_extra_bytes(step, device)
    except (ValueError, RuntimeError) as error:  # a backend that cannot serve, or OOM
        record["note"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return record


def print_table(records: list[dict[str, object]]) -> None:
    header = f"{'loss':<17}{'backend':<10}{'B':>8}{'ms':>12}{'peak MiB':>12}  note"
    print(header)
    print("-" * len(header))
    for r in records:
        ms = f"{r['ms']:.1f}" if r["ms"] is not None else "-"
        peak = r["peak_bytes"]
        mib = f"{peak / 2**20:.1f}" if isinstance(peak, int) else "-"
        print(f"{r['loss']:<17}{r['backend']:<10}{r['B']:>8}{ms:>12}{mib:>12}  {r['note']}")


def rst_table(records: list[dict[str, object]]) -> str:
    """The measured rows as an RST list-table (what the docs page shows)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - loss",
        "     - backend",
        "     - B",
        "     - ms",
        "     - peak MiB",
    ]
    for r in records:
        if r["ms"] is None:
            continue
        peak = r["peak_bytes"]
        mib = f"{peak / 2**20:.1f}" if isinstance(peak, int) else "-"
        lines += [
            f"   * - {r['loss']}",
            f"     - {r['backend']}",
            f"     - {r['B']}",
            f"     - {r['ms']:.1f}",
            f"     - {mib}",
        ]
    return "\n".join(lines)


def crossover(records: list[dict[str, object]], loss: str) -> int | None:
    """Smallest B from which tiled is faster than dense at every larger measured B."""
    times: dict[tuple[str, int], float] = {
        (str(r["backend"]), int(r["B"])): float(r["ms"])  # type: ignore[call-overload]
        for r in records
        if r["loss"] == loss and r["ms"] is not None
    }
    sizes = sorted({n for (_, n) in times})
    best = None
    for n in reversed(sizes):
        if ("dense", n) in times and ("tiled", n) in times:
            if times[("tiled", n)] >= times[("dense", n)]:
                break
            best = n
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["dense", "compiled", "tiled", "triton", "pml"],
        choices=BACKENDS,
    )
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[1024, 4096, 8192], help="batch sizes B (rows)"
    )
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch and BLAS (default: OMP_NUM_THREADS if set, else the "
        "CPUs this process may use)",
    )
    parser.add_argument("--max-dense-bytes", type=float, default=6 * 2**30)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON-lines file to append to (default: stdout only)",
    )
    parser.add_argument(
        "--rst",
        type=Path,
        default=None,
        help="also write the table as an RST list-table to this file",
    )
    parser.add_argument(
        "--crossover",
        action="store_true",
        help="dense vs tiled at B = 128 ... 2048, report the crossover",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    set_threads(args.threads)
    if args.crossover:
        args.backends, args.sizes = ["dense", "tiled"], [128, 256, 512, 1024, 2048]
    records = []
    for loss in args.losses:
        for n in args.sizes:
            for backend in args.backends:
                record = measure(loss, backend, n, args, device)
                records.append(record)
                line = json.dumps(record)
                print(line, flush=True)
                if args.output is not None:
                    with args.output.open("a") as handle:
                        handle.write(line + "\n")
    print()
    print_table(records)
    if args.rst is not None:
        args.rst.write_text(rst_table(records) + "\n")
    if args.crossover:
        for loss in args.losses:
            print(f"crossover {loss}: tiled wins from B = {crossover(records, loss)}")


if __name__ == "__main__":
    sys.exit(main())
