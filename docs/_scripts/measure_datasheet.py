"""Numbers quoted by the datasheet (docs/datasheet.rst), measured from renders.

Usage: ``PYTHONPATH=src python docs/_scripts/measure_datasheet.py`` (one thread).
"""

from __future__ import annotations

import math

import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import noise_texture, spicule_cnr
from nodulebench.data.factors import SITES


def central_share() -> float:
    """Share of the spicules' signal in the central 3 of 32 slices of default volumes."""
    ds = SyntheticNodules(n=32, seed=0, volume_size=32, output="hu")
    spiky = ds.render(range(32), overrides={"spiculation": 0.9, "noise_hu": 0.0})
    smooth = ds.render(range(32), overrides={"spiculation": 0.0, "noise_hu": 0.0})
    per_slice = (spiky - smooth).abs().sum((0, 1, 3, 4))
    return float(per_slice[15:18].sum() / per_slice.sum())


def site_noise(size: int) -> dict[str, float]:
    """Median image noise (HU) per site at ``size`` px, from two rescans."""
    out = {}
    for name in SITES:
        ds = SyntheticNodules(n=32, seed=1, image_size=size, output="hu")
        over = {"site": name}
        a = ds.render(range(32), overrides=over, rescan=1)
        b = ds.render(range(32), overrides=over, rescan=2)
        std, _ = noise_texture((a - b) / math.sqrt(2.0), ds.pixel_size_mm[:32])
        out[name] = float(std.median())
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(f"spiculation signal in the central 3 of 32 slices: {central_share():.2f}")
    for size in (32, 64):
        noise = ", ".join(f"{k} {v:.0f}" for k, v in site_noise(size).items())
        print(f"median noise at {size} px (HU): {noise}")
    train = NoduleSpec()
    base = spicule_cnr(train, n=128)
    print(f"spicule CNR at 32 px: train {base:.1f}")
    for name, spec in (("covariate", train.covariate_shift()), ("degraded", train.degraded())):
        cnr = spicule_cnr(spec, n=128)
        print(f"  {name} {cnr:.1f} ({cnr / base:.2f} of train)")


if __name__ == "__main__":
    main()
