"""SupCon under DDP: each rank renders its shard, the loss sees the whole global batch.

Launch with torchrun (the gloo backend runs on CPUs; NCCL is used on GPUs)::

    torchrun --standalone --nproc_per_node 2 examples/ddp_supcon.py --out ddp
    torchrun --standalone --nproc_per_node 2 examples/ddp_supcon.py --tiny --out /tmp/ddp

Without torchrun it runs as one process. Every step draws one global batch (the same on
every rank, from a seeded generator); rank ``r`` takes every ``world_size``-th sample of
it from ``r``. ``SupConLoss(gather_distributed=True)`` gathers the embeddings of all
ranks with an autograd-aware all-gather, so that after DDP's gradient averaging each rank
holds the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a headless backend, chosen by the script (the library never does)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from nodulebench import NoduleSpec, SupConLoss, SyntheticNodules, distributed  # noqa: E402
from nodulebench.models import small_cnn  # noqa: E402
from nodulebench.threads import set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ddp"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    steps, global_batch, n = (3, 32, 128) if args.tiny else (100, 256, 4096)

    if "WORLD_SIZE" in os.environ:  # launched by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    rank, world_size = distributed.get_rank(), distributed.get_world_size()

    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts)
    # The examples' CNN with group norm: batch norm would normalise each rank's shard by
    # its own statistics (SyncBatchNorm, which shares them, needs GPUs), so the run would
    # no longer be the single-process one on the global batch.
    encoder = nn.Sequential(
        small_cnn(norm=lambda channels: nn.GroupNorm(8, channels)), nn.Linear(64, 32)
    ).to(device)
    model = DistributedDataParallel(encoder) if distributed.is_distributed() else encoder
    criterion = SupConLoss(temperature=0.1, gather_distributed=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    # Every rank holds the same dataset description and renders only what it needs.
    data = SyntheticNodules(
        NoduleSpec().with_shortcut("diameter_mm", 0.9), n=n, seed=0, image_size=32
    )
    generator = torch.Generator().manual_seed(1)  # same draws on every rank
    history = []
    for step in range(steps):
        batch = torch.randperm(n, generator=generator)[:global_batch]
        local = batch[rank::world_size]
        images = data.render(local).to(device)
        loss = criterion(model(images), data.labels[local].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Each rank's loss is scaled so that their mean is the global-batch loss.
        global_loss = distributed.sum_over_ranks(loss.detach()) / world_size
        history.append(float(global_loss))
        if rank == 0 and (step % 10 == 0 or step == steps - 1):
            print(
                f"step {step:>3}: global SupCon loss {global_loss.item():.4f} "
                f"({world_size} ranks x {len(local)} samples)"
            )

    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "history.json").write_text(
            json.dumps({"world_size": world_size, "global_batch": global_batch, "loss": history})
        )
        figure, ax = plt.subplots(figsize=(4.5, 3), layout="constrained")
        ax.plot(range(1, steps + 1), history)
        ax.set(
            xlabel="step",
            ylabel="SupCon loss (global batch)",
            title=f"DDP, {world_size} ranks, global batch {global_batch}",
        )
        figure.savefig(args.out / "loss.png", dpi=90)
    if dist.is_initialized():
        # Leave together, without DDP: a DDP module still alive when the group goes keeps
        # its Gloo threads, and freed at interpreter exit they abort the process.
        del model
        gc.collect()
        dist.barrier()  # rank 0 may still be writing its files
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
