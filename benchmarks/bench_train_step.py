"""One training step of the study's model, under each way tried to make it faster.

The quick preset's time is mostly stage-1 training (a SupCon step on two views of 128
images of 32 x 32 px for seven of its twelve losses). This script times that step on one
thread, the variants alternated round by round so that a busy machine shifts them alike:

* ``study``: what the study runs (bfloat16 autocast, channels-last, fused AdamW);
* ``float32``: no autocast; ``contiguous``: channels-first memory;
* ``compiled``: the forward through ``torch.compile`` (compilation not counted);
* ``grouped x2``: two models trained as one network whose convolutions have two groups,
  which is how ``torch.func.vmap`` over models (e.g. over seeds) runs a convolution; its
  time is per model, to compare with ``study``.

    python benchmarks/bench_train_step.py [--profile]

``--profile`` also prints where the ``study`` step spends its time, operator by operator
and input shape (``torch.profiler``).

Results are appended to ``benchmarks/results/bench_train_step.jsonl`` with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent

from _harness import cpu_name  # noqa: E402
from nodulebench import create_loss  # noqa: E402
from study.models import GlobalAveragePool, StudyModel  # noqa: E402
from study.training import _Heads  # noqa: E402

BATCH, VIEWS, SIZE, WIDTH = 128, 2, 32, 16


def study_step(autocast: bool, layout: torch.memory_format, compiled: bool) -> Callable[[], None]:
    """A SupCon step of the study's model on one batch of two views."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = StudyModel("small_cnn", WIDTH, 64).to(memory_format=layout)
    heads: nn.Module = _Heads(model)
    forward = torch.compile(heads) if compiled else heads
    images = torch.randn(BATCH * VIEWS, 1, SIZE, SIZE, generator=generator)
    images = images.contiguous(memory_format=layout)
    labels = torch.randint(0, 2, (BATCH,), generator=generator)
    loss_fn = create_loss("supcon", temperature=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            projections, _ = forward(images)
        loss = loss_fn(projections.float().unflatten(0, (BATCH, VIEWS)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def grouped_step(models: int) -> Callable[[], None]:
    """``models`` copies of the study's encoder as one network of grouped convolutions."""

    def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin * models, cout * models, 3, stride, 1, bias=False, groups=models),
            nn.BatchNorm2d(cout * models),
            nn.ReLU(inplace=True),
        ]

    w = WIDTH
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = nn.Sequential(
            *stage(1, w, 1),
            *stage(w, 2 * w, 2),
            *stage(2 * w, 4 * w, 2),
            *stage(4 * w, 8 * w, 2),
            GlobalAveragePool(),
        )
    network = network.to(memory_format=torch.channels_last)
    images = torch.randn(
        BATCH * VIEWS, models, SIZE, SIZE, generator=torch.Generator().manual_seed(0)
    )
    images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = network(images)
        loss = features.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_train_step.jsonl")
    parser.add_argument(
        "--profile", action="store_true", help="print the study step's operators by input shape"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cl, contiguous = torch.channels_last, torch.contiguous_format
    # (step, models trained by one step)
    variants = {
        "study": (study_step(True, cl, False), 1),
        "float32": (study_step(False, cl, False), 1),
        "contiguous": (study_step(True, contiguous, False), 1),
        "compiled": (study_step(True, cl, True), 1),
        "ungrouped x1": (grouped_step(1), 1),
        "grouped x2": (grouped_step(2), 2),
    }
    for step, _ in variants.values():  # warm-up, and compilation
        for _ in range(3):
            step()
    seconds = dict.fromkeys(variants, 0.0)
    for _ in range(args.rounds):
        for name, (step, _) in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name] += time.perf_counter() - start
    per_model = {
        name: round(1e3 * seconds[name] / (args.rounds * args.steps * models), 1)
        for name, (_, models) in variants.items()
    }
    header = (
        f"SupCon step, {BATCH} images x {VIEWS} views of {SIZE} px, small_cnn width "
        f"{WIDTH}, one thread, on {cpu_name()}, torch {torch.__version__}"
    )
    print(header)
    for name, ms in per_model.items():
        print(f"  {name:>12}: {ms} ms per model-step")
    print(
        "  (ungrouped x1 and grouped x2 share an encoder without heads or loss: compare "
        "them with each other)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps({"config": header, "ms_per_model_step": per_model}) + "\n")
    if args.profile:
        from torch.profiler import profile

        step = variants["study"][0]
        with profile(record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
        print(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total",
                row_limit=15,
                max_name_column_width=32,
                max_shapes_column_width=60,
            )
        )


if __name__ == "__main__":
    main()
