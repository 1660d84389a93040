r"""Null baselines for the probes that make a claim: saliency and CKA.

A probe's number means something only against what it gives without the thing it claims
to measure. Grad-CAM's energy per area in a region is compared with image-agnostic maps
(a centered Gaussian; the nodule body seen through a coarse grid) and with the same maps
scored against other images' masks; CKA between two trained networks is compared with CKA
against an untrained network of the same architecture and against the raw pixels. Every
comparison is reported as an excess with an interval, and the CKA cells are
Holm-corrected as one family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F

from nodulebench._validation import check_floating, check_in_range, check_int, check_ndim
from nodulebench.probing.cka import linear_cka
from nodulebench.probing.saliency import mask_energy
from nodulebench.stats import (
    MeanInterval,
    PairedComparison,
    PairedTest,
    holm,
    mean_interval,
    paired_comparison,
)

__all__ = [
    "CKABaseline",
    "SaliencyBaseline",
    "centered_gaussian_maps",
    "cka_baselines",
    "coarse_mask_maps",
    "disjoint_pairs",
    "permuted_masks",
    "saliency_baselines",
]


def centered_gaussian_maps(like: torch.Tensor, *, sigma: float = 0.25) -> torch.Tensor:
    r"""Image-agnostic maps: one isotropic Gaussian at the image center, for every image.

    :math:`M(u) = \exp(-\lVert u - c\rVert^2 / 2 s^2)` with :math:`u` in pixel units,
    :math:`c` the image's center and :math:`s` = ``sigma`` times the smallest side. Nodules
    are drawn at the center, so such a map already puts more than its area's share on any
    central region: the baseline that a saliency map must beat to show that it follows the
    image.

    Args:
        like: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` tensor whose shape, dtype and device the
            maps take (e.g. the saliency maps).
        sigma: the Gaussian's deviation as a fraction of the smallest side, ``> 0``.

    Returns:
        Maps of ``like``'s shape, in ``(0, 1]``, equal for every image.

    Raises:
        ValueError: If ``like`` has the wrong shape or ``sigma`` is not positive.
        TypeError: If ``like`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> m = centered_gaussian_maps(torch.zeros(2, 1, 5, 5))
        >>> m.shape, float(m[0, 0, 2, 2]), bool(m[0, 0, 0, 0] < 0.1)
        (torch.Size([2, 1, 5, 5]), 1.0, True)
    """
    check_ndim("like", like, (4, 5), "(N, 1, H, W) or (N, 1, D, H, W)")
    check_floating("like", like)
    if like.shape[1] != 1:
        raise ValueError(f"like must have one channel (N, 1, ...); got shape {tuple(like.shape)}")
    check_in_range("sigma", sigma, 0.0, float("inf"), inclusive=False)
    spatial = like.shape[2:]
    scale = sigma * min(spatial)
    squared = torch.zeros(spatial, dtype=torch.float64, device=like.device)
    for axis, size in enumerate(spatial):
        offset = torch.arange(size, dtype=torch.float64, device=like.device) - (size - 1) / 2
        shape = [1] * len(spatial)
        shape[axis] = size
        squared = squared + (offset**2).reshape(shape)
    gaussian = torch.exp(-squared / (2 * scale**2)).to(like.dtype)
    return gaussian.expand(like.shape).clone()


def coarse_mask_maps(mask: torch.Tensor, *, grid: int = 8) -> torch.Tensor:
    """Maps that know only where a region is, at a coarse resolution: a mask through a grid.

    The mask is averaged over a ``grid x grid`` (``grid^3`` for volumes) grid of cells and
    upsampled back (bi- or trilinearly), as Grad-CAM at a coarse layer sees the image. With
    the nodule-body mask this is a map that attends to the nodule and knows nothing of its
    spicules: the baseline that a claim "the model looks at the spicules" must beat.

    Args:
        mask: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` boolean mask (e.g. ``masks["nodule"]``).
        grid: the number of cells a side, ``>= 1`` and at most the smallest side.

    Returns:
        ``float32`` maps of the mask's shape, in ``[0, 1]``.

    Raises:
        ValueError: If the shape is wrong or ``grid`` is out of range.
        TypeError: If ``mask`` is not boolean.

    Example:
        >>> import torch
        >>> mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool); mask[..., 4:12, 4:12] = True
        >>> m = coarse_mask_maps(mask, grid=4)
        >>> float(m[0, 0, 8, 8]), float(m[0, 0, 0, 0])
        (1.0, 0.0)
    """
    check_ndim("mask", mask, (4, 5), "(N, 1, H, W) or (N, 1, D, H, W)")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor; got {mask.dtype}")
    if mask.shape[1] != 1:
        raise ValueError(f"mask must have one channel (N, 1, ...); got shape {tuple(mask.shape)}")
    spatial = tuple(mask.shape[2:])
    check_int("grid", grid, 1, min(spatial))
    values = mask.to(torch.float32)
    if mask.ndim == 4:
        coarse = F.adaptive_avg_pool2d(values, (grid, grid))
        maps = F.interpolate(coarse, size=spatial, mode="bilinear", align_corners=False)
    else:
        coarse = F.adaptive_avg_pool3d(values, (grid, grid, grid))
        maps = F.interpolate(coarse, size=spatial, mode="trilinear", align_corners=False)
    return maps.clamp(0.0, 1.0)


def _derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` without fixed points (``n >= 2``)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    target = torch.empty(n, dtype=torch.int64)
    target[order] = order.roll(-1)  # each image takes the next one's mask in a random cycle
    return target


def permuted_masks(
    masks: Mapping[str, torch.Tensor], *, seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every image's masks replaced by another image's: the permuted-mask null.

    A saliency map scored against the masks of a different image keeps everything that
    does not depend on the image (the center, the typical size of a nodule) and loses what
    does; its energy per area is what a map gets without following the image.

    Args:
        masks: ``{region: (N, 1, ...) bool tensor}``, ``N >= 2``, e.g. from
            ``dataset.render(indices, return_masks=True)``.
        seed: seed of the permutation (a random cycle, so no image keeps its own masks).

    Returns:
        ``(permuted, source)``: the masks with image ``i`` given image ``source[i]``'s masks
        (every region from the same image), and ``source``, an ``(N,)`` int64 tensor.

    Raises:
        ValueError: If fewer than two images, or the regions' image counts differ.
        TypeError: If ``masks`` is not a mapping of tensors.

    Example:
        >>> import torch
        >>> masks = {"nodule": torch.eye(3, dtype=torch.bool).reshape(3, 1, 1, 3)}
        >>> permuted, source = permuted_masks(masks)
        >>> bool((source != torch.arange(3)).all())
        True
    """
    if not isinstance(masks, Mapping) or len(masks) == 0:
        raise TypeError(f"masks must be a non-empty mapping region -> mask; got {masks!r}")
    check_int("seed", seed, 0)
    counts = set()
    for region, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{region!r}] must be a torch.Tensor; got {type(mask).__name__}")
        if mask.ndim == 0:
            raise ValueError(f"masks[{region!r}] must have a leading image dimension; got a scalar")
        counts.add(mask.shape[0])
    if len(counts) != 1:
        raise ValueError(f"masks must hold the same number of images; got {sorted(counts)}")
    (n,) = counts
    if n < 2:
        raise ValueError(f"permuted_masks needs at least 2 images; got {n}")
    source = _derangement(n, seed)
    return {region: mask[source.to(mask.device)] for region, mask in masks.items()}, source


@dataclass(frozen=True)
class SaliencyBaseline:
    """A region's saliency energy per area against one null baseline.

    Energy per area is the mean share of the attribution in the region over the mean share
    of the area (1: the attribution is spread as the pixels are). The excess is the mean
    over images of the per-image difference of shares, over the region's mean area share,
    so that ``excess.difference == observed - null``.

    Attributes:
        region: the region (a key of the masks, or ``"background"``).
        baseline: ``"gaussian"``, ``"coarse_mask"`` or ``"permuted"``.
        observed: the maps' energy per area in the region.
        null: the baseline's energy per area.
        excess: the paired comparison over images of observed and null (difference, its
            interval, the paired test's p-value).
        n_images: number of images.
    """

    region: str
    baseline: str
    observed: float
    null: float
    excess: PairedComparison
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def _scaled_shares(
    maps: torch.Tensor, masks: Mapping[str, torch.Tensor], areas: Mapping[str, float]
) -> dict[str, list[float]]:
    """Per-image energy shares over the region's mean area share (regions with area)."""
    shares = mask_energy(maps, masks)
    return {
        region: (shares[region] / areas[region]).tolist() for region in areas if areas[region] > 0
    }


def saliency_baselines(
    maps: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    *,
    coarse_region: str | None = "nodule",
    grid: int = 8,
    sigma: float = 0.25,
    seed: int = 0,
    confidence: float = 0.95,
    test: PairedTest = "t",
) -> list[SaliencyBaseline]:
    """Saliency energy per area of every region against image-agnostic and permuted nulls.

    Three nulls, each scored with :func:`~nodulebench.probing.mask_energy` exactly as the
    maps are:

    * ``"gaussian"``: :func:`centered_gaussian_maps` (``sigma``) against the true masks;
    * ``"coarse_mask"``: :func:`coarse_mask_maps` of ``masks[coarse_region]`` (by default
      the nodule) through a ``grid`` grid, against the true masks (left out when
      ``coarse_region`` is ``None``; an image without that region gets a flat map);
    * ``"permuted"``: the maps themselves against other images' masks
      (:func:`permuted_masks`, ``seed``).

    A claim that the maps follow a region holds where the excess over every null is
    positive and its interval excludes zero; an energy per area above 1 alone does not
    show it, since the image-agnostic nulls are above 1 on central regions.

    Args:
        maps: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)`` non-negative maps, ``N >= 2``, e.g.
            from :func:`~nodulebench.probing.grad_cam` with ``target`` the malignant class.
        masks: ``{region: bool tensor shaped like maps}`` in general-to-specific order
            (see :func:`~nodulebench.probing.mask_energy`).
        coarse_region: the region whose coarse mask is the ``"coarse_mask"`` null.
        grid: cells a side of the ``"coarse_mask"`` null.
        sigma: the Gaussian's deviation as a fraction of the smallest side.
        seed: seed of the permutation.
        confidence: coverage of the excess's interval.
        test: the paired test over images (see :func:`~nodulebench.stats.paired_comparison`).

    Returns:
        One :class:`SaliencyBaseline` per region (of the masks, then ``"background"``;
        regions absent from every image are left out) and baseline.

    Raises:
        ValueError: If ``N < 2``, ``coarse_region`` is not a region, or the maps or masks do not fit
            (see :func:`~nodulebench.probing.mask_energy`).
        TypeError: If an input has the wrong type.

    Example:
        >>> import torch
        >>> masks = {"nodule": torch.zeros(4, 1, 16, 16, dtype=torch.bool)}
        >>> masks["nodule"][..., 5:11, 5:11] = True
        >>> maps = masks["nodule"].float() + 0.01
        >>> rows = saliency_baselines(maps, masks, grid=4)
        >>> [(r.baseline, round(r.observed, 2), round(r.null, 2)) for r in rows][:2]
        [('gaussian', 6.71, 2.34), ('coarse_mask', 6.71, 3.67)]
    """
    check_ndim("maps", maps, (4, 5), "(N, 1, H, W) or (N, 1, D, H, W)")
    check_floating("maps", maps)
    if maps.shape[0] < 2:
        raise ValueError(f"maps must hold at least 2 images; got N = {maps.shape[0]}")
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping region -> mask; got {type(masks).__name__}")
    if coarse_region is not None and coarse_region not in masks:
        raise ValueError(
            f"coarse_region must be one of the masks' regions {list(masks)}; got {coarse_region!r}"
        )
    area_shares = mask_energy(torch.ones_like(maps), masks)
    areas = {region: float(share.mean()) for region, share in area_shares.items()}
    observed = _scaled_shares(maps, masks, areas)
    nulls: dict[str, dict[str, list[float]]] = {
        "gaussian": _scaled_shares(centered_gaussian_maps(maps, sigma=sigma), masks, areas)
    }
    if coarse_region is not None:
        coarse = coarse_mask_maps(masks[coarse_region], grid=grid).to(maps.device, maps.dtype)
        # A coarse map of an empty mask is all zero: such images get a flat map instead.
        empty = coarse.flatten(1).sum(dim=1) == 0
        coarse[empty] = 1.0
        nulls["coarse_mask"] = _scaled_shares(coarse, masks, areas)
    shuffled, _ = permuted_masks(masks, seed=seed)
    nulls["permuted"] = _scaled_shares(maps, shuffled, areas)
    rows = []
    for region, values in observed.items():
        for baseline, null in nulls.items():
            comparison = paired_comparison(values, null[region], confidence=confidence, test=test)
            rows.append(
                SaliencyBaseline(
                    region,
                    baseline,
                    sum(values) / len(values),
                    sum(null[region]) / len(values),
                    comparison,
                    len(values),
                )
            )
    return rows


def disjoint_pairs(
    first: Sequence[Any], second: Sequence[Any] | None = None
) -> list[tuple[Any, Any]]:
    """Pairs of runs in which no run appears twice, so that CKA values are independent.

    With one sequence (the seeds of one condition): ``(first[0], first[1])``,
    ``(first[2], first[3])``, ... (an odd last run is left out). With two (two conditions
    over the same seeds): ``(first[i], second[i])``. Comparing every run with one reference
    run instead reuses it in every pair, so the values share its luck and their interval
    is too narrow.

    Args:
        first: runs (models, feature tensors, or names), at least two (one with ``second``).
        second: the other condition's runs, as many as ``first``, none of them in ``first``.

    Returns:
        The pairs, in order.

    Raises:
        ValueError: If there are too few runs, the lengths differ, or a run (the same
            object) appears twice.
        TypeError: If an argument is not a sequence.

    Example:
        >>> disjoint_pairs(["s0", "s1", "s2", "s3", "s4"])
        [('s0', 's1'), ('s2', 's3')]
        >>> disjoint_pairs(["a0", "a1"], ["b0", "b1"])
        [('a0', 'b0'), ('a1', 'b1')]
    """
    for name, runs in (("first", first), ("second", second)):
        if runs is not None and (isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence)):
            raise TypeError(f"{name} must be a sequence of runs; got {type(runs).__name__}")
    runs = list(first) + ([] if second is None else list(second))
    seen: set[tuple[str, object]] = set()
    for run in runs:
        # Names compare by value; models and tensors by identity (a tensor's == is elementwise).
        key = ("name", run) if isinstance(run, (str, int)) else ("object", id(run))
        if key in seen:
            raise ValueError(f"every run must appear once; {run!r} appears twice")
        seen.add(key)
    if second is None:
        if len(first) < 2:
            raise ValueError(f"first must hold at least 2 runs; got {len(first)}")
        return [(first[i], first[i + 1]) for i in range(0, len(first) - 1, 2)]
    if len(first) != len(second) or len(first) == 0:
        raise ValueError(
            f"first and second must hold as many runs (at least one); got {len(first)} and "
            f"{len(second)}"
        )
    return list(zip(first, second, strict=True))


@dataclass(frozen=True)
class CKABaseline:
    """One cell's CKA between trained networks against one null baseline.

    Attributes:
        cell: the cell's name (e.g. a layer, or a pair of losses at a layer).
        baseline: ``"random_init"`` or ``"pixels"``.
        observed: CKA of the independent pairs, with its interval over pairs.
        null: CKA of each pair's first network with the baseline, over pairs.
        excess: the paired comparison over pairs of observed and null.
        adjusted_p: Holm-adjusted p-value over every cell and baseline.
        rejected: whether ``adjusted_p <= alpha``: the cell's CKA differs from the null.
    """

    cell: str
    baseline: str
    observed: MeanInterval
    null: MeanInterval
    excess: PairedComparison
    adjusted_p: float
    rejected: bool

    def to_dict(self) -> dict[str, Any]:
        """A plain dictionary (JSON friendly)."""
        return asdict(self)


def cka_baselines(
    pairs: Mapping[str, Sequence[tuple[torch.Tensor, torch.Tensor]]],
    random_init: Mapping[str, Sequence[torch.Tensor]] | None = None,
    pixels: torch.Tensor | None = None,
    *,
    debiased: bool = False,
    alpha: float = 0.05,
    confidence: float = 0.95,
    test: PairedTest = "t",
) -> list[CKABaseline]:
    """CKA of trained networks against an untrained network and the raw pixels, per cell.

    For each cell and each pair ``i`` (``(x_i, y_i)``, features of two independently
    trained networks on the same samples; see :func:`disjoint_pairs`) the observed value
    is ``linear_cka(x_i, y_i)``. The nulls, with ``x_i`` fixed:

    * ``"random_init"``: ``linear_cka(x_i, r_i)``, ``r_i`` the features of an *untrained*
      network of the same architecture at the same layer, one network per pair;
    * ``"pixels"``: ``linear_cka(x_i, pixels)``.

    The excess (observed minus null) gets a paired interval over pairs, and its p-values
    are Holm-corrected over every cell and baseline. A high CKA between trained networks
    says that they agree *beyond* architecture and input only where it exceeds these nulls.

    Args:
        pairs: ``{cell: [(x_i, y_i), ...]}``, at least two independent pairs per cell,
            each ``(N, D)`` or ``(N, *)`` features of the same ``N`` samples.
        random_init: ``{cell: [r_i, ...]}``, one untrained network's features per pair.
        pixels: ``(N, *)`` the raw inputs of the same samples.
        debiased: use the debiased CKA estimator (see
            :func:`~nodulebench.probing.linear_cka`).
        alpha: family-wise error rate of the Holm correction, in ``(0, 1)``.
        confidence: coverage of the intervals.
        test: the paired test over pairs (see :func:`~nodulebench.stats.paired_comparison`).

    Returns:
        One :class:`CKABaseline` per cell and baseline, cells in the mapping's order.

    Raises:
        ValueError: If no baseline is given, a cell has fewer than two pairs, the numbers
            of pairs and random networks differ, a tensor is reused within a cell, or the
            features do not fit (see :func:`~nodulebench.probing.linear_cka`).
        TypeError: If an input has the wrong type.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> pixels = torch.randn(64, 20, generator=g)
        >>> shared = torch.randn(20, 8, generator=g)
        >>> def net(weights):
        ...     return torch.relu(pixels @ weights)
        >>> def trained():
        ...     return net(shared + 0.1 * torch.randn(20, 8, generator=g))
        >>> pairs = {"layer": [(trained(), trained()) for _ in range(4)]}
        >>> randoms = {"layer": [net(torch.randn(20, 8, generator=g)) for _ in range(4)]}
        >>> rows = cka_baselines(pairs, randoms, pixels)
        >>> [(r.baseline, r.excess.difference > 0, r.rejected) for r in rows]
        [('random_init', True, True), ('pixels', True, True)]
    """
    if not isinstance(pairs, Mapping) or len(pairs) == 0:
        raise TypeError(f"pairs must be a non-empty mapping cell -> pairs; got {pairs!r}")
    if random_init is None and pixels is None:
        raise ValueError("cka_baselines needs a baseline: random_init, pixels or both; got none")
    if random_init is not None and set(random_init) != set(pairs):
        raise ValueError(
            f"random_init must have the cells of pairs {list(pairs)}; got {list(random_init)}"
        )
    check_in_range("alpha", alpha, 0.0, 1.0, inclusive=False)
    partial = []
    for cell, cell_pairs in pairs.items():
        if not isinstance(cell_pairs, Sequence):
            raise TypeError(f"pairs[{cell!r}] must be a sequence of (x, y) tensor pairs")
        if len(cell_pairs) < 2:
            raise ValueError(
                f"pairs[{cell!r}] must hold at least 2 independent pairs; got {len(cell_pairs)}"
            )
        for index, pair in enumerate(cell_pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"pairs[{cell!r}][{index}] must be a tuple (x, y); got {pair!r}")
        runs = [tensor for pair in cell_pairs for tensor in pair]
        randoms = [] if random_init is None else list(random_init[cell])
        if random_init is not None and len(randoms) != len(cell_pairs):
            raise ValueError(
                f"random_init[{cell!r}] must hold one untrained network per pair "
                f"({len(cell_pairs)}); got {len(randoms)}"
            )
        if len({id(t) for t in runs + randoms}) != len(runs) + len(randoms):
            raise ValueError(
                f"pairs[{cell!r}] and random_init[{cell!r}] must not reuse a tensor: reused "
                "references make the values dependent (see disjoint_pairs)"
            )
        observed = [linear_cka(x, y, debiased=debiased) for x, y in cell_pairs]
        nulls: dict[str, list[float]] = {}
        if random_init is not None:
            nulls["random_init"] = [
                linear_cka(x, r, debiased=debiased)
                for (x, _), r in zip(cell_pairs, randoms, strict=True)
            ]
        if pixels is not None:
            nulls["pixels"] = [linear_cka(x, pixels, debiased=debiased) for x, _ in cell_pairs]
        for baseline, null in nulls.items():
            partial.append(
                (
                    cell,
                    baseline,
                    mean_interval(observed, confidence=confidence),
                    mean_interval(null, confidence=confidence),
                    paired_comparison(observed, null, confidence=confidence, test=test),
                )
            )
    adjusted = holm([row[4].p_value for row in partial])
    return [CKABaseline(*row, p, p <= alpha) for row, p in zip(partial, adjusted, strict=True)]
