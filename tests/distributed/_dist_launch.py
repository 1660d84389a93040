"""Run a function on W local CPU processes joined in a gloo process group.

``run_distributed(fn, world_size, workdir)`` starts ``world_size`` fresh Python
processes (subprocesses, so nothing of pytest's state leaks into them). The parent hosts
the rendezvous store on 127.0.0.1 with an OS-chosen port (no race for a free port); gloo
is pinned to the loopback interface. Each child imports the module that defines ``fn``
by file name, calls ``fn(rank, world_size)`` inside an initialised process group, saves
the returned object (tensors, numbers, strings, lists, dicts) with ``torch.save`` and
destroys the process group. The parent returns the per-rank results, or raises with
every failing rank's traceback; a child that hangs is killed after ``timeout_s``.

Run as a script, this file is the child's entry point.
"""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import nodulebench

_SRC = str(Path(nodulebench.__file__).resolve().parents[1])
# The study package (``import study``) for children whose module uses it.
_STUDY = str(Path(__file__).resolve().parents[2] / "benchmarks")


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n.startswith("lo")), "lo")


def run_distributed(
    fn: Callable[[int, int], Any], world_size: int, workdir: Path, *, timeout_s: float = 60.0
) -> list[Any]:
    """Call ``fn(rank, world_size)`` on ``world_size`` gloo ranks; return their results."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = Path(sys.modules[fn.__module__].__file__ or "").resolve()
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size,
        is_master=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, _STUDY, env.get("PYTHONPATH")) if p)
    env["GLOO_SOCKET_IFNAME"] = _loopback_interface()
    env["OMP_NUM_THREADS"] = "1"  # W processes share the machine's cores
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        for rank in range(world_size):
            with (workdir / f"rank{rank}.log").open("w") as log:
                cmd = [
                    sys.executable,
                    __file__,
                    str(rank),
                    str(world_size),
                    str(store.port),
                    str(target),
                    fn.__name__,
                    str(workdir),
                    str(timeout_s),
                ]
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        # Poll rather than wait in turn: once one rank fails, the others would only
        # block in their next collective, so they are stopped at once.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.02)
    finally:
        stopped = [p for p in procs if p.poll() is None]
        for proc in stopped:
            proc.kill()
        for proc in stopped:
            proc.wait()
        del store
    failures = []
    for rank, proc in enumerate(procs):
        if proc in stopped or proc.returncode != 0:
            why = "stopped by the harness" if proc in stopped else f"exit code {proc.returncode}"
            log = (workdir / f"rank{rank}.log").read_text()
            failures.append(f"--- rank {rank} ({why}) ---\n{log}")
    if failures:
        timed_out = time.monotonic() >= deadline
        reason = f"the {timeout_s} s timeout expired" if timed_out else "a rank failed"
        raise RuntimeError(
            f"distributed run on {world_size} ranks aborted: {reason}\n" + "\n".join(failures)
        )
    return [torch.load(workdir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def _child_main(argv: list[str]) -> None:
    rank, world_size, port = int(argv[0]), int(argv[1]), int(argv[2])
    target, name, workdir, timeout_s = Path(argv[3]), argv[4], Path(argv[5]), float(argv[6])
    timeout = timedelta(seconds=timeout_s)
    sys.path.insert(0, str(target.parent))
    module = importlib.import_module(target.stem)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        result = getattr(module, name)(rank, world_size)
        torch.save(result, workdir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        _child_main(sys.argv[1:])
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
