"""Noise level and grain of each kernel at 32, 64 and 128 px and in 32^3 volumes.

Measured from images alone: the difference of two rescans of 32 default-spec nodules
(noise 60 HU at the acquisition grid, spacing 0.7 mm, no blur) divided by sqrt(2), read by
``nodulebench.data.noise_texture`` (standard deviation and autocorrelation half-length).

Usage: ``PYTHONPATH=src python docs/_scripts/measure_noise.py``
"""

from __future__ import annotations

import math

import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed, noise_texture
from nodulebench.data.factors import KERNELS

SPEC = NoduleSpec(
    marginals={"noise_hu": Fixed(60.0), "pixel_spacing_mm": Fixed(0.7), "blur_mm": Fixed(0.0)}
)


def field(kernel: str, size: int, volume: bool = False, n: int = 32) -> torch.Tensor:
    extra = {"volume_size": size} if volume else {"image_size": size}
    ds = SyntheticNodules(SPEC, n=n, seed=11, output="hu", **extra)  # type: ignore[arg-type]
    over = {"kernel": kernel}
    a = ds.render(range(n), overrides=over, rescan=1)
    b = ds.render(range(n), overrides=over, rescan=2)
    return (a - b) / math.sqrt(2.0)


def main() -> None:
    torch.set_num_threads(1)
    print("kernel    size   std_HU  half_length_mm")
    for kernel in KERNELS:
        for size, volume in ((32, False), (64, False), (128, False), (32, True)):
            std, grain = noise_texture(
                field(kernel, size, volume, 8 if volume else 32), 44.8 / size
            )
            label = f"{size}^3" if volume else f"{size}px"
            print(f"{kernel:9s} {label:6s} {float(std.median()):6.1f}  {float(grain.median()):.2f}")


if __name__ == "__main__":
    main()
