"""CPU threads: how many this process may use, and one call that sets torch and BLAS alike.

Torch's default is one thread per core it sees, which ignores a container's CPU quota, and
numpy's and scipy's OpenBLAS start their own thread per core. Small convolutions gain
little from more threads and lose much when threads outnumber the cores they get: a
thread that is descheduled holds every other at the end of each parallel region, and
OpenBLAS threads spin for a while after each call on cores that torch's threads need.

Scripts call :func:`set_threads` once, at the start:

.. code-block:: python

    from nodulebench.threads import set_threads

    set_threads()   # OMP_NUM_THREADS if set, else what the process may use
                    # (CPU affinity and cgroup quota)
    set_threads(1)  # one thread: torch, numpy's and scipy's BLAS
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "THREAD_VARIABLES",
    "available_cpus",
    "blas_threads",
    "default_threads",
    "set_threads",
    "thread_limit",
]

log = logging.getLogger(__name__)

#: Environment variables that thread pools read once, as their library loads.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_SET = ("openblas_set_num_threads", "openblas_set_num_threads64_")
_GET = ("openblas_get_num_threads", "openblas_get_num_threads64_")


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's CPU quota (``None``: no quota, or none readable)."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 means none
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota.

    ``os.cpu_count()`` and torch's default see every core of the machine; a container or
    ``taskset`` may grant fewer (``os.sched_getaffinity``), and a cgroup quota
    (``cpu.max``, or ``cpu.cfs_quota_us`` under cgroup v1) may grant less time than those
    cores: a quota of 1.5 CPUs counts as 1.

    Args:
        cgroup_root: where the cgroup file system is mounted.

    Returns:
        An integer ``>= 1``.

    Example:
        >>> available_cpus() >= 1
        True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def default_threads() -> int:
    """The thread count that scripts use unless told otherwise.

    ``OMP_NUM_THREADS`` when it is set to an integer ``>= 1`` (the user chose), capped by
    :func:`available_cpus`; otherwise :func:`available_cpus`.

    Example:
        >>> 1 <= default_threads() <= available_cpus()
        True
    """
    cpus = available_cpus()
    chosen = os.environ.get("OMP_NUM_THREADS", "").strip()
    if chosen.isdigit() and int(chosen) >= 1:
        return min(int(chosen), cpus)
    return cpus


def _openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (numpy's, scipy's), via /proc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted(
        {line.split()[-1] for line in maps.splitlines() if "openblas" in line.rsplit("/", 1)[-1]}
    )
    libraries = []
    for path in paths:
        with contextlib.suppress(OSError):
            libraries.append(ctypes.CDLL(path))
    return libraries


def _symbol(library: ctypes.CDLL, names: tuple[str, ...]) -> ctypes._NamedFuncPointer | None:
    for name in names:
        for prefix in ("", "scipy_"):
            function = getattr(library, prefix + name, None)
            if function is not None:
                return function  # type: ignore[no-any-return]
    return None


def blas_threads() -> dict[str, int]:
    """``{library file: threads}`` of every OpenBLAS loaded in this process.

    Example:
        >>> import numpy
        >>> all(n >= 1 for n in blas_threads().values())
        True
    """
    out = {}
    for library in _openblas_libraries():
        get = _symbol(library, _GET)
        if get is not None:
            out[Path(str(library._name)).name] = int(get())
    return out


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads in torch and in numpy's and scipy's BLAS.

    Sets :func:`torch.set_num_threads`, the inter-op pool when it has not started yet,
    every loaded OpenBLAS (through ``threadpoolctl`` when installed, else directly), and
    :data:`THREAD_VARIABLES` in ``os.environ`` for libraries loaded later and for child
    processes.

    Args:
        threads: ``>= 1``; ``None`` for :func:`default_threads`.

    Returns:
        The number of threads set.

    Raises:
        ValueError: ``threads`` is not an integer ``>= 1``.

    Example:
        .. code-block:: python

            import numpy  # BLAS libraries loaded before or after: both follow
            from nodulebench.threads import blas_threads, set_threads

            set_threads(2)
            print(torch.get_num_threads(), blas_threads())
            # 2 {'libscipy_openblas64_-32a4b2a6.so': 2}
    """
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 or None; got {threads!r}")
    torch.set_num_threads(threads)
    # Only possible before the first inter-op parallel work; harmless to skip after.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        for library in _openblas_libraries():
            set_ = _symbol(library, _SET)
            if set_ is not None:
                set_(ctypes.c_int(threads))
    else:
        threadpoolctl.threadpool_limits(limits=threads)
    log.info("CPU threads: %d (torch and BLAS)", threads)
    return threads


@contextlib.contextmanager
def thread_limit(threads: int = 1) -> Iterator[None]:
    """Run the block on at most ``threads`` torch and OpenBLAS threads; restore them after.

    For many tiny operations (linear probes on a few hundred samples): each one is too
    small to share, and a thread pool only adds a wake-up and a barrier per call, while
    the idle threads of one library spin on the cores that the other's need. Measured on a
    loaded 2-core CPU, :func:`~nodulebench.probing.probe_factors` on 128 samples and 23
    factors took 0.7 s on one thread and 79 s with torch and OpenBLAS on two each.

    Args:
        threads: the most threads inside the block, ``>= 1``.

    Raises:
        ValueError: ``threads`` is not an integer ``>= 1``.

    Example:
        >>> before = torch.get_num_threads()
        >>> with thread_limit(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1; got {threads!r}")
    torch_before = torch.get_num_threads()
    saved = []
    for library in _openblas_libraries():
        get, set_ = _symbol(library, _GET), _symbol(library, _SET)
        if get is not None and set_ is not None:
            before = int(get())
            if before > threads:
                set_(ctypes.c_int(threads))
                saved.append((set_, before))
    if torch_before > threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch_before > threads:
            torch.set_num_threads(torch_before)
        for set_, before in saved:
            set_(ctypes.c_int(before))
