"""How visible the cause is: the spicules' contrast-to-noise ratio, measured from renders.

A covariate shift should move the acquisition without erasing what the label depends on;
:func:`spicule_cnr` says how much of the spicules' signal survives the acquisition.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_int
from .dataset import SyntheticNodules
from .spec import NoduleSpec

__all__ = ["spicule_cnr"]


def spicule_cnr(spec: NoduleSpec, *, image_size: int = 32, n: int = 64, seed: int = 0) -> float:
    """Median contrast-to-noise ratio of spicules under ``spec``'s acquisition.

    Measured from images only: ``n`` samples of ``spec`` are rendered with
    ``spiculation = 0.9`` and with ``0`` without noise; the contrast is the mean difference
    over the spicule mask (after partial volume and blur), the noise the standard deviation
    of the difference of two rescans divided by ``sqrt(2)``. Their ratio's median over the
    samples is returned.

    Args:
        spec: the distribution whose acquisition (noise, kernel, blur, spacing) is measured.
        image_size: output size in pixels, ``>= 16``.
        n: samples rendered, ``>= 4``.
        seed: dataset seed.

    Returns:
        The median contrast-to-noise ratio (a float).

    Raises:
        TypeError: ``spec`` is not a :class:`~nodulebench.NoduleSpec`.
        ValueError: ``image_size`` or ``n`` out of range.

    Example:
        >>> train = NoduleSpec()
        >>> spicule_cnr(train.degraded()) < spicule_cnr(train)
        True
    """
    if not isinstance(spec, NoduleSpec):
        raise TypeError(f"spec must be a NoduleSpec; got {type(spec).__name__}")
    check_int("image_size", image_size, 16, 1024)
    check_int("n", n, 4, 100_000)
    ds = SyntheticNodules(spec, n=n, seed=seed, image_size=image_size, output="hu")
    idx = list(range(n))
    spiky, masks = ds.render(
        idx, overrides={"spiculation": 0.9, "noise_hu": 0.0}, return_masks=True
    )
    smooth = ds.render(idx, overrides={"spiculation": 0.0, "noise_hu": 0.0})
    region = masks["spicules"]
    count = region.flatten(1).sum(1).clamp(min=1)
    contrast = ((spiky - smooth) * region).flatten(1).sum(1) / count
    first = ds.render(idx, overrides={"spiculation": 0.9}, rescan=1)
    second = ds.render(idx, overrides={"spiculation": 0.9}, rescan=2)
    noise = ((first - second) / math.sqrt(2.0)).flatten(1).std(1)
    return float(torch.median(contrast / noise))
