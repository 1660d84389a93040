"""Backend choice for the pairwise losses: who can serve these inputs, and why not.

Three backends compute the same per-anchor quantities on prepared inputs (``z`` of shape
``(N, D)``, ``labels`` of shape ``(N,)`` int64):

* ``"reference"``: the dense definitions of ``nodulebench.kernels._dense`` (``N x N``
  matrices, plain autograd); any device, float32/float64.
* ``"tiled"``: :mod:`nodulebench.kernels.tiled`, row blocks with recompute backward,
  :math:`O(N D + bN)` memory; any device, float32/float64.
* ``"triton"``: ``nodulebench.kernels.triton_supcon``, fused kernels for SupCon; CUDA
  (or CPU under ``TRITON_INTERPRET=1``), needs the optional ``triton`` package.

The two-tower losses (:data:`TWO_TOWER_LOSSES`) take a pair of prepared towers instead
of ``(z, labels)`` and run through :func:`run_two_tower`; the reference and tiled
backends serve them.

Each backend is described by a :class:`BackendInfo` that declares its devices, dtypes,
losses, option values, whether it serves a subset of anchor rows (``row_range=``, which
``gather_distributed=True`` needs: this rank's rows against the gathered batch), whether
it serves a separate reference set (``reference=``, from ``ref_emb``) and the
tolerances its tests use. :func:`select_backend` turns ``"auto"`` into a name and checks
a forced one, raising :class:`ValueError` that says why it cannot serve;
:func:`run_per_anchor` selects and calls.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from nodulebench._validation import check_choice
from nodulebench.kernels import _reference, tiled, two_tower_reference
from nodulebench.kernels._dense import SUPCON_VARIANTS
from nodulebench.kernels._triton_utils import TRITON_SUPCON_CAPABILITIES, interpreter_enabled
from nodulebench.kernels.distances import DISTANCES

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "KERNEL_LOSSES",
    "TILED_CROSSOVER",
    "TWO_TOWER_LOSSES",
    "BackendInfo",
    "KernelFunction",
    "get_backend_info",
    "run_per_anchor",
    "run_two_tower",
    "select_backend",
]

KERNEL_LOSSES = (
    "supcon",
    "contrastive",
    "contrastive_pml",
    "triplet_hard",
    "triplet_all",
    "triplet_semihard",
    "multi_similarity",
    "cnc",
)
"""Per-anchor computations a backend may implement (triplet mining is part of the name)."""

TWO_TOWER_LOSSES = ("clip", "siglip")
"""Per-pair computations on two towers ``(image, text)``, called by :func:`run_two_tower`."""

BACKEND_CHOICES = ("auto", "reference", "tiled", "triton")
"""Values of every pairwise loss's ``backend=`` argument."""

KernelFunction = Callable[..., tuple[torch.Tensor, ...]]
"""A per-anchor function: ``(z, labels, **options)`` to ``(loss, valid)`` (or, for
``"triplet_all"`` and ``"contrastive_pml"``, ``(total, count, valid)``)."""

TILED_CROSSOVER: Mapping[str, int] = MappingProxyType(
    {
        # Smallest N (rows after flattening views) from which "auto" prefers "tiled" to the
        # dense reference. Measured 2026-11-26 on the shared 2-core CPU (AMD EPYC, busy with
        # other jobs, so 1 thread), float32, D = 128, forward + backward median of 5:
        #   python benchmarks/bench_losses.py --crossover --repeats 5 --threads 1
        # tiled vs dense ms: supcon about even up to 1024 (1.1 vs 1.3 at 256, 18.0 vs 16.9
        # at 1024: one tile covers the batch there), 49 vs 89 at 2048; contrastive 5.9 vs 9.6
        # at 512; triplet_hard 1.4 vs 1.6 at 256; triplet_all 2.5 vs 7.2 at 128.
        # Multi-similarity was still 1.4x slower tiled at 2048 (167 vs 122 ms) and faster at
        # 4096 (669 vs 992 ms), where the dense version needs 0.5 GB.
        "supcon": 1024,
        "contrastive": 512,
        "triplet_hard": 256,
        "triplet_all": 128,
        "multi_similarity": 4096,
        # Two-tower losses (N = pairs), measured 2026-11-30 on the same CPU (1 thread, busy):
        #   python benchmarks/bench_losses.py --crossover --losses clip siglip --repeats 5 \
        #       --threads 1   (and --backends dense tiled --sizes 2048 4096 --repeats 3)
        # tiled vs dense ms: clip 220 vs 182 at 1024 (one tile covers the batch), 560 vs 845
        # and 426 vs 821 at 2048, 2095 vs 3559 at 4096; siglip 61 vs 52 at 1024, 190 vs 189
        # and 499 vs 548 at 2048, 1999 vs 3116 at 4096; a third of the memory from 2048 on.
        "clip": 2048,
        "siglip": 2048,
        "cnc": 1024,  # SupCon's engine with two more masks per tile: SupCon's crossover
    }
)


def _module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (parents excepted)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class BackendInfo:
    """What one backend can serve, and how closely its tests must match the reference.

    Attributes:
        name: Backend name used by ``backend=``.
        devices: Device types it runs on (e.g. ``{"cpu", "cuda"}``); empty means any.
        dtypes: Accepted dtypes of the prepared embeddings.
        options: For each supported loss, the accepted values of the options it
            restricts (e.g. ``{"supcon": {"variant": ("out", "in")}}``).
        tolerances: ``(rtol, atol)`` per dtype, for values and gradients against the
            float64 reference.
        load: Returns the per-anchor function of each loss in ``options``; called on
            first use only, so that a backend with an optional dependency imports it then.
        max_dim: Largest embedding dimension ``D`` it handles, or None for no limit.
        requires: Optional module that must be importable, or None.
        interpreted_on_cpu: Whether it also runs on the CPU when Triton's
            ``TRITON_INTERPRET`` is on (read as Triton reads it: ``1``, ``true``, ``on``
            or ``yes``).
        anchor_subsets: Whether it computes only rows ``row_range`` as anchors against
            all rows (what a loss with ``gather_distributed=True`` asks for).
        reference_sets: Whether it compares the anchors with a separate reference set
            (``reference=``, what ``ref_emb`` asks for).
        summary: One line for the docs and error messages.
        declined: Losses it does not implement, each with the reason it gives.
    """

    name: str
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    options: Mapping[str, Mapping[str, tuple[Any, ...]]]
    tolerances: Mapping[torch.dtype, tuple[float, float]]
    load: Callable[[], Mapping[str, KernelFunction]]
    max_dim: int | None = None
    requires: str | None = None
    interpreted_on_cpu: bool = False
    anchor_subsets: bool = True
    reference_sets: bool = True
    summary: str = ""
    declined: Mapping[str, str] = field(default_factory=dict)

    def why_not(self, loss: str, z: torch.Tensor, options: Mapping[str, Any]) -> str | None:
        """Return why this backend cannot serve the inputs, or None if it can."""
        if loss in self.declined:
            return self.declined[loss]
        if loss not in self.options:
            served = ", ".join(repr(name) for name in self.options)
            return f"it implements only {served}, not {loss!r}"
        for option, accepted in self.options[loss].items():
            if option in options and options[option] not in accepted:
                return f"it supports {option} in {accepted}, got {options[option]!r}"
        if options.get("row_range") is not None and not self.anchor_subsets:
            return (
                "it computes every row against every row only, and "
                "gather_distributed=True needs this rank's rows against the gathered batch"
            )
        if options.get("reference") is not None and not self.reference_sets:
            return (
                "it compares the batch with itself only, and a reference set "
                "(ref_emb) needs the anchors against other rows"
            )
        devices = self.devices_now()
        if devices and z.device.type not in devices:
            return f"it runs on {sorted(devices)} devices, got {z.device.type!r}"
        if z.dtype not in self.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"it supports dtypes {names}, got {z.dtype}"
        if self.max_dim is not None and z.ndim == 2 and z.shape[1] > self.max_dim:
            return f"it supports D <= {self.max_dim}, got D = {z.shape[1]}"
        if self.requires is not None and not _module_available(self.requires):
            return f"the module {self.requires!r} it needs is not available"
        return None

    def devices_now(self) -> frozenset[str]:
        """Device types served in this process (CPU too when interpreted)."""
        if self.interpreted_on_cpu and interpreter_enabled():
            return self.devices | {"cpu"}
        return self.devices

    def kernel(self, loss: str) -> KernelFunction:
        """Return this backend's per-anchor function for ``loss``."""
        return self.load()[loss]


_FLOAT = frozenset({torch.float32, torch.float64})
_TILED_OPTIONS = {
    "supcon": {"variant": SUPCON_VARIANTS},
    "contrastive": {},
    "triplet_hard": {"distance": DISTANCES},
    "triplet_all": {"distance": DISTANCES},
    "multi_similarity": {},
    "clip": {},
    "siglip": {},
    "cnc": {"variant": SUPCON_VARIANTS},
}
# Semi-hard mining picks a different negative per positive pair, and the
# pytorch-metric-learning contrastive form counts its non-zero terms: only the dense
# definitions serve them.
_REFERENCE_OPTIONS = {
    **_TILED_OPTIONS,
    "triplet_semihard": {"distance": DISTANCES},
    "contrastive_pml": {},
}
_TRITON = TRITON_SUPCON_CAPABILITIES

_REFERENCE_KERNELS: Mapping[str, KernelFunction] = _frozen(
    {
        "supcon": _reference.supcon_reference,
        "contrastive": _reference.contrastive_reference,
        "contrastive_pml": _reference.contrastive_pml_reference,
        "triplet_hard": _reference.triplet_hard_reference,
        "triplet_all": _reference.triplet_all_reference,
        "triplet_semihard": _reference.triplet_semihard_reference,
        "multi_similarity": _reference.multi_similarity_reference,
        "clip": two_tower_reference.clip_reference,
        "siglip": two_tower_reference.siglip_reference,
        "cnc": _reference.cnc_reference,
    }
)

_TILED_KERNELS: Mapping[str, KernelFunction] = _frozen(
    {
        "supcon": tiled.supcon_tiled,
        "contrastive": tiled.contrastive_tiled,
        "triplet_hard": tiled.triplet_hard_tiled,
        "triplet_all": tiled.triplet_all_tiled,
        "multi_similarity": tiled.multi_similarity_tiled,
        "clip": tiled.clip_tiled,
        "siglip": tiled.siglip_tiled,
        "cnc": tiled.cnc_tiled,
    }
)


def _triton_kernels() -> Mapping[str, KernelFunction]:
    # Imported on first use: importing it imports the optional triton package.
    from nodulebench.kernels.triton_supcon import supcon_triton

    return {"supcon": supcon_triton}


BACKENDS: Mapping[str, BackendInfo] = MappingProxyType(
    {
        "reference": BackendInfo(
            name="reference",
            devices=frozenset(),
            dtypes=_FLOAT,
            options=_frozen(_REFERENCE_OPTIONS),
            # It is the definition; float32 differs from float64 only by its own rounding.
            tolerances=_frozen({torch.float64: (0.0, 0.0), torch.float32: (1e-4, 1e-5)}),
            load=lambda: _REFERENCE_KERNELS,
            summary="dense N x N definitions with autograd (nodulebench.kernels._dense)",
        ),
        "tiled": BackendInfo(
            name="tiled",
            devices=frozenset(),
            dtypes=_FLOAT,
            options=_frozen(_TILED_OPTIONS),
            tolerances=_frozen({torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}),
            load=lambda: _TILED_KERNELS,
            summary="row blocks, online log-sum-exp, recompute backward; O(N D + b N) memory",
        ),
        # Declared once, beside the kernels, in nodulebench.kernels._triton_utils.
        "triton": BackendInfo(
            name="triton",
            devices=frozenset(d for d in _TRITON.devices if d != "cpu"),
            dtypes=frozenset(_TRITON.dtypes),
            options=_frozen({"supcon": {"variant": _TRITON.variants}}),
            tolerances=_frozen(
                {dtype: (tol.loss_rtol, tol.loss_atol) for dtype, tol in _TRITON.tolerances.items()}
            ),
            load=_triton_kernels,
            max_dim=_TRITON.max_dim,
            requires="triton",
            interpreted_on_cpu="cpu" in _TRITON.devices,
            # Its kernels take every row as an anchor and column; the distributed losses
            # and reference sets fall back to the other backends rather than a second
            # kernel variant.
            anchor_subsets=False,
            reference_sets=False,
            summary="fused CUDA kernels for SupCon / NT-Xent, fp32 accumulation, deterministic",
            declined=_frozen(
                {
                    loss: (
                        "the SupCon kernels compare one tower with itself under a label mask; "
                        "a two-tower loss needs image x text tiles, two log-sum-exp directions "
                        "and a scale gradient, which they do not compute (use backend='tiled')"
                    )
                    for loss in TWO_TOWER_LOSSES
                }
            ),
        ),
    }
)
"""Every backend by name, in the order ``"auto"`` prefers them after Triton."""


def get_backend_info(name: str) -> BackendInfo:
    """Return the :class:`BackendInfo` of backend ``name``."""
    check_choice("backend", name, tuple(BACKENDS))
    return BACKENDS[name]


def select_backend(
    loss: str,
    backend: str,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    **options: Any,
) -> str:
    """Name the backend that will compute ``loss`` on these prepared inputs.

    ``"auto"`` takes Triton on CUDA when it is installed and serves the inputs; else the
    tiled engine when ``N`` reaches :data:`TILED_CROSSOVER` for the loss (with
    ``row_range``: when anchors x rows reaches its square, the same amount of work); else
    the dense reference (or the tiled engine if the reference is unavailable).

    Args:
        loss: One of :data:`KERNEL_LOSSES` or :data:`TWO_TOWER_LOSSES`.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"``.
        z: Prepared embeddings, shape ``(N, D)`` (a two-tower loss: the image tower).
        labels: Prepared labels, shape ``(N,)`` (not consulted by the current rules).
        **options: The loss options that restrict backends (``variant``, ``distance``,
            ``row_range``, ``reference``).

    Returns:
        The backend name.

    Raises:
        ValueError: If ``loss`` or ``backend`` is unknown, or if a forced backend cannot
            serve the inputs; the message says why.

    Example:
        >>> z = torch.randn(8, 4)
        >>> select_backend("supcon", "tiled", z, variant="out")
        'tiled'
    """
    del labels
    check_choice("loss", loss, KERNEL_LOSSES + TWO_TOWER_LOSSES)
    check_choice("backend", backend, BACKEND_CHOICES)
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor; got {type(z).__name__}")
    if backend != "auto":
        reason = BACKENDS[backend].why_not(loss, z, options)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot compute {loss!r} here: {reason}")
        return backend
    if z.device.type == "cuda" and BACKENDS["triton"].why_not(loss, z, options) is None:
        return "triton"
    tiled_ok = BACKENDS["tiled"].why_not(loss, z, options) is None
    row_range = options.get("row_range")
    anchors = z.shape[0] if row_range is None else row_range[1] - row_range[0]
    reference = options.get("reference")
    columns = z.shape[0] if reference is None else reference[0].shape[0]
    if tiled_ok and anchors * columns >= TILED_CROSSOVER[loss] ** 2:
        return "tiled"
    if BACKENDS["reference"].why_not(loss, z, options) is None:
        return "reference"
    if tiled_ok:
        return "tiled"
    reasons = "; ".join(f"{name}: {BACKENDS[name].why_not(loss, z, options)}" for name in BACKENDS)
    raise ValueError(f"no backend can compute {loss!r} here: {reasons}")


def run_per_anchor(
    loss: str,
    z: torch.Tensor,
    labels: torch.Tensor,
    *,
    backend: str = "auto",
    **options: Any,
) -> tuple[torch.Tensor, ...]:
    """Select a backend and return its per-anchor result for ``loss``.

    The result is ``(loss, valid)`` for every loss except ``"triplet_all"`` and
    ``"contrastive_pml"``, which return ``(total, count, valid)`` (``(N, 2)`` sums and
    counts for the latter: positive and negative pairs); the leading dimension is ``N``,
    or ``stop - start`` with ``row_range``.

    Args:
        loss: One of :data:`KERNEL_LOSSES`.
        z: Prepared embeddings, shape ``(N, D)``.
        labels: Prepared labels, shape ``(N,)``, int64.
        backend: ``"auto"``, ``"reference"``, ``"tiled"`` or ``"triton"``.
        **options: Keyword options of the per-anchor function (``temperature``,
            ``variant``, ``margin``, ``distance``, ...), and ``row_range``: ``None``
            (every row is an anchor) or ``(start, stop)``, the anchors of a distributed
            loss (its own rows of the gathered batch ``z``), served by the backends that
            declare ``anchor_subsets``; and ``reference``: ``None`` or
            ``(ref_z, ref_labels)``, a separate set of columns that every row of ``z`` is
            compared with (no self-pairs), served by those that declare
            ``reference_sets``.

    Returns:
        The per-anchor tensors of the chosen backend.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss, valid = run_per_anchor(
        ...     "supcon", z, torch.arange(8) % 2, backend="tiled", temperature=0.1)
        >>> loss.shape
        torch.Size([8])
    """
    check_choice("loss", loss, KERNEL_LOSSES)  # two-tower losses: run_two_tower
    name = select_backend(loss, backend, z, labels, **options)
    # Every row an anchor, compared with the batch itself: the call every backend
    # serves, without the arguments that say so.
    options = {
        key: value
        for key, value in options.items()
        if not (key in ("row_range", "reference") and value is None)
    }
    return BACKENDS[name].kernel(loss)(z, labels, **options)


def run_two_tower(
    loss: str,
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    backend: str = "auto",
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select a backend and return its per-pair result ``(loss, valid)`` for a two-tower loss.

    Args:
        loss: One of :data:`TWO_TOWER_LOSSES`.
        image: Prepared image tower, shape ``(N, D)``.
        text: Prepared text tower, shape ``(N, D)``.
        backend: ``"auto"``, ``"reference"`` or ``"tiled"`` (``"triton"`` declines).
        **options: Keyword options of the per-pair function (``scale``, ``bias``) and
            ``row_range``: ``None`` (every pair is an anchor) or ``(start, stop)``.

    Returns:
        ``(loss, valid)``, shape ``(N,)`` or ``(stop - start,)``; every pair is valid.

    Example:
        >>> x = torch.eye(3)
        >>> loss, _ = run_two_tower("clip", x, x, backend="tiled", scale=torch.tensor(2.0))
        >>> round(float(loss[0]), 4)  # log(e^2 + 2) - 2
        0.2395
    """
    check_choice("loss", loss, TWO_TOWER_LOSSES)
    name = select_backend(loss, backend, image, **options)
    loss_value, valid = BACKENDS[name].kernel(loss)(image, text, **options)
    return loss_value, valid
