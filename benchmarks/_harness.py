"""Small measuring harness shared by the benchmark scripts.

Time: median wall-clock of forward + backward over repeats, after a warm-up call,
synchronizing CUDA around each repeat. Peak extra memory: on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the call; on CPU, the
peak of the running sum of the allocation and free events that ``torch.profiler`` records
for every CPU tensor (``profile_memory=True``), in time order. That counts tensor bytes
exactly as PyTorch's allocator hands them out, independent of the process RSS and of
what the C allocator keeps cached; it does not see scratch memory that a library such as
oneDNN allocates outside PyTorch's allocator.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

Step = Callable[[], None]


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """A human-readable name of the device that ran the measurement."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Step, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``step()`` over ``repeats`` runs after one warm-up run."""
    step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra_bytes(step: Step, device: torch.device) -> int:
    """Peak bytes allocated by ``step()`` above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    return peak


def forward_backward(
    per_anchor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    labels: torch.Tensor,
) -> Step:
    """A step that runs ``per_anchor`` on a fresh leaf copy of ``z`` and backpropagates."""
    leaf = z.detach().clone().requires_grad_()

    def step() -> None:
        leaf.grad = None
        per_anchor(leaf, labels).sum().backward()

    return step


# ------------------------------------------------- dense recipes (the baselines to beat)
# These are the usual B x B formulations, written as most code bases write them; they
# compute the same per-anchor values as the tiled kernels.


def _eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def dense_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    eye = _eye(z.shape[0], z.device)
    s = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    pos = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    num_pos = pos.sum(dim=1)
    loss = -torch.where(pos, log_prob, 0.0).sum(dim=1) / num_pos.clamp(min=1)
    return torch.where(num_pos > 0, loss, 0.0)


def _dense_euclidean(z: torch.Tensor) -> torch.Tensor:
    sq = (z * z).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp(min=0.0).clamp(min=1e-12).sqrt()


def dense_contrastive(z: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    d = _dense_euclidean(z)
    eye = _eye(z.shape[0], z.device)
    same = labels[:, None] == labels[None, :]
    cost = torch.where(same, 0.5 * d * d, 0.5 * (margin - d).clamp(min=0.0) ** 2)
    return cost.masked_fill(eye, 0.0).sum(dim=1) / max(z.shape[0] - 1, 1)


def dense_contrastive_pml(
    z: torch.Tensor,
    labels: torch.Tensor,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
) -> torch.Tensor:
    """pytorch-metric-learning's form: each anchor's unsquared positive and negative hinges."""
    d = _dense_euclidean(z)
    eye = _eye(z.shape[0], z.device)
    same = labels[:, None] == labels[None, :]
    pull = torch.where(same & ~eye, (d - pos_margin).clamp(min=0.0), 0.0).sum(dim=1)
    push = torch.where(~same, (neg_margin - d).clamp(min=0.0), 0.0).sum(dim=1)
    return pull + push


def dense_triplet_hard(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    d = _dense_euclidean(z)
    eye = _eye(z.shape[0], z.device)
    same = labels[:, None] == labels[None, :]
    hardest_pos = d.masked_fill(~same | eye, float("-inf")).amax(dim=1)
    hardest_neg = d.masked_fill(same, float("inf")).amin(dim=1)
    valid = (same & ~eye).any(dim=1) & (~same).any(dim=1)
    return torch.where(valid, torch.relu(hardest_pos - hardest_neg + margin), 0.0)


def dense_triplet_all(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """The B x B x B enumeration of every (anchor, positive, negative) triplet."""
    d = _dense_euclidean(z)
    eye = _eye(z.shape[0], z.device)
    same = labels[:, None] == labels[None, :]
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    terms = torch.relu(d[:, :, None] - d[:, None, :] + margin) * valid
    return terms.sum(dim=(1, 2))


def dense_multi_similarity(
    z: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
) -> torch.Tensor:
    s = z @ z.T
    eye = _eye(z.shape[0], z.device)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    max_neg = s.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
    min_pos = s.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
    keep_pos = pos & (s - epsilon < max_neg)
    keep_neg = neg & (s + epsilon > min_pos)
    pos_sum = torch.where(keep_pos, torch.exp(-alpha * (s - base)), 0.0).sum(dim=1)
    neg_sum = torch.where(keep_neg, torch.exp(beta * (s - base)), 0.0).sum(dim=1)
    loss = torch.log1p(pos_sum) / alpha + torch.log1p(neg_sum) / beta
    return torch.where(pos.any(dim=1), loss, 0.0)


DENSE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "supcon": dense_supcon,
    "contrastive": dense_contrastive,
    "contrastive_pml": dense_contrastive_pml,
    "triplet_hard": dense_triplet_hard,
    "triplet_all": dense_triplet_all,
    "multi_similarity": dense_multi_similarity,
}
