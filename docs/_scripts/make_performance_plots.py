"""Draw the performance page's plots from the JSON lines of ``benchmarks/bench_losses.py``.

One figure per loss: forward + backward time (left) and peak extra memory (right) against
the batch size, one line per backend, both axes logarithmic. Records without a time (a
skipped or failed backend) are left out. Run from the repository root::

    python docs/_scripts/make_performance_plots.py docs/_static/bench_losses_sweep_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_static" / "performance"

Series = dict[str, list[tuple[int, float, float]]]


def read_records(paths: list[Path]) -> dict[str, Series]:
    """``{loss: {backend: [(B, ms, MiB), ...]}}`` from JSON-lines files, sorted by B."""
    table: dict[str, Series] = defaultdict(lambda: defaultdict(list))
    devices = set()
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record["ms"] is None or record["peak_bytes"] is None:
                continue
            devices.add(record["device"])
            table[record["loss"]][record["backend"]].append(
                (int(record["B"]), float(record["ms"]), record["peak_bytes"] / 2**20)
            )
    if len(devices) > 1:
        raise ValueError(f"the records come from several devices: {sorted(devices)}")
    return {
        loss: {b: sorted(points) for b, points in series.items()} for loss, series in table.items()
    }


def plot_loss(loss: str, series: Series, title: str, path: Path) -> None:
    """Time and memory against batch size for one loss, one line per backend."""
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(8.0, 3.2), layout="constrained")
    for backend, points in sorted(series.items()):
        sizes = [p[0] for p in points]
        ax_time.plot(sizes, [p[1] for p in points], marker="o", label=backend)
        ax_memory.plot(sizes, [p[2] for p in points], marker="o", label=backend)
    for ax, ylabel in ((ax_time, "forward + backward, ms"), (ax_memory, "peak extra memory, MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_time.legend(frameon=False)
    fig.suptitle(f"{loss}: {title}", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", nargs="+", type=Path, help="bench_losses.py output files")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files")
    parser.add_argument(
        "--title",
        default="CPU, 1 thread, float32, D = 128",
        help="what and where it was measured, shown on each figure",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for loss, series in read_records(args.jsonl).items():
        plot_loss(loss, series, args.title, args.out / f"{loss}.png")
        print(args.out / f"{loss}.png")


if __name__ == "__main__":
    main()
