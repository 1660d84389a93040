"""A large batch on the tiled backend, with its peak memory measured against the dense one.

``SupConLoss(backend="reference")`` builds the B x B similarity matrices (and autograd
keeps them for the backward pass); ``backend="tiled"`` walks over tiles and never holds
one. Both give the same loss. For each batch size this measures forward + backward time
and the peak memory allocated above the inputs (CUDA: the allocator's peak; CPU: the
running sum of the allocations and frees that ``torch.profiler`` records).

    python examples/tiled_large_batch.py --out tiled-large-batch
    python examples/tiled_large_batch.py --tiny --out /tmp/tiled
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a headless backend, chosen by the script (the library never does)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from nodulebench import SupConLoss  # noqa: E402
from nodulebench.threads import set_threads  # noqa: E402

DENSE_LIMIT = 8192  # the dense backend needs about 1.4 GB at B = 8192 and 4x per doubling


def peak_extra_bytes(step, device: torch.device) -> int:
    """Peak bytes allocated while ``step()`` runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tiled-large-batch"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    sizes = [128, 256] if args.tiny else [1024, 2048, 4096, 8192, 16384, 32768]
    generator = torch.Generator().manual_seed(0)

    records = []
    for batch_size in sizes:
        embeddings = torch.randn(batch_size, 128, generator=generator).to(device)
        labels = torch.randint(0, 100, (batch_size,), generator=generator).to(device)
        values = {}
        for backend in ("reference", "tiled"):
            if backend == "reference" and batch_size > DENSE_LIMIT:
                continue
            criterion = SupConLoss(temperature=0.1, backend=backend)
            leaf = embeddings.clone().requires_grad_()

            def step(criterion=criterion, leaf=leaf, labels=labels) -> torch.Tensor:
                leaf.grad = None
                loss = criterion(leaf, labels)
                loss.backward()
                return loss

            values[backend] = step().item()  # also the warm-up
            start = time.perf_counter()
            step()
            seconds = time.perf_counter() - start
            peak = peak_extra_bytes(step, device)
            records.append(
                {
                    "backend": backend,
                    "B": batch_size,
                    "seconds": round(seconds, 4),
                    "peak_MiB": round(peak / 2**20, 2),
                    "loss": values[backend],
                }
            )
            print(
                f"B = {batch_size:>6}  {backend:<9}  loss {values[backend]:.6f}  "
                f"{seconds * 1e3:8.1f} ms  peak {peak / 2**20:9.1f} MiB"
            )
        if len(values) == 2 and abs(values["tiled"] - values["reference"]) > 1e-4 * abs(
            values["reference"]
        ):
            raise RuntimeError(f"backends disagree at B = {batch_size}: {values}")

    (args.out / "memory.json").write_text(json.dumps(records, indent=1))
    figure, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
    for backend in ("reference", "tiled"):
        rows = [r for r in records if r["backend"] == backend]
        ax_time.plot([r["B"] for r in rows], [r["seconds"] for r in rows], "o-", label=backend)
        ax_memory.plot([r["B"] for r in rows], [r["peak_MiB"] for r in rows], "o-", label=backend)
    for ax, ylabel in ((ax_time, "forward + backward, s"), (ax_memory, "peak extra MiB")):
        ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel=ylabel)
        ax.grid(alpha=0.3)
    ax_memory.legend(frameon=False)
    figure.suptitle(f"SupCon, D = 128, {device.type}", fontsize=9)
    figure.savefig(args.out / "memory.png", dpi=90)


if __name__ == "__main__":
    main()
