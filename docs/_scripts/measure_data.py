"""Measure the generator's fidelity numbers quoted in the data guide (docs/data.rst).

Run from the repository root: ``PYTHONPATH=src python docs/_scripts/measure_data.py``.

Prints, for the default spec at seed 3:

- spicule area (mm^2) of 40 nodules at 32, 64 and 128 px, from the images alone (the HU the
  spicules add over their contrast, without noise, blur, texture or vessels);
- how far the 32 px image is from the 4 x 4 area-average of the 128 px one;
- the fraction of default benign nodules without a spicule;
- a bright-pixel counter's response to spiculation and to diameter (10th -> 90th
  percentile), the cue-strength check of the first generator's audit;
- the largest difference between renders of one sample in batches of 1 and 64, and in
  chunks of 1 and 128;
- how well :func:`~nodulebench.data.measure` recovers the context and acquisition factors
  of 400 default samples at 64 px (accuracy of the categories, agreement of the HU);
- the cost of a 10,000,000-sample dataset: construction, memory, pickled size, and the
  whole factor table when asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed, measure
from nodulebench.data.factors import FACTORS
from nodulebench.data.geometry import spicule_count
from nodulebench.data.render import render_hu

QUIET = {
    "background_texture_hu": Fixed(0.0),
    "vessels": Fixed("none"),
    "blur_mm": Fixed(0.0),
    "noise_hu": Fixed(0.0),
    "calcification": Fixed("absent"),
    "texture": Fixed("solid"),
    "attenuation_hu": Fixed(40.0),
    "location": Fixed("isolated"),
    "fissure": Fixed("absent"),
}


def spicule_areas() -> None:
    idx = list(range(40))
    areas, images = {}, {}
    for size in (32, 64, 128):
        ds = SyntheticNodules(
            NoduleSpec(marginals=QUIET), n=40, seed=3, image_size=size, output="hu"
        )
        spiky = ds.render(idx)
        plain = ds.render(idx, overrides={"spiculation": 0.0})
        contrast = ds.factors["attenuation_hu"] - ds.factors["background_hu"]
        areas[size] = float(
            ((spiky - plain).flatten(1).sum(1) * ds.pixel_size_mm**2 / contrast).sum()
        )
        images[size] = spiky
    print(
        "spicule area of 40 nodules, mm^2: "
        + ", ".join(f"{a:.0f} at {s} px" for s, a in areas.items())
    )
    diff = (images[32] - F.avg_pool2d(images[128], 4)).abs()
    print(
        f"32 px vs area-average of 128 px: mean |diff| {float(diff.mean()):.1f} HU, "
        f"99th percentile {float(diff.quantile(0.99)):.0f} HU, max {float(diff.max()):.0f} HU"
    )


def benign_without_spicules() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=2000, seed=3)
    counts = spicule_count(ds.factors["spiculation"])
    benign = ds.labels == 0
    without = float((counts[benign] == 0).float().mean())
    print(
        f"default benign nodules without a spicule: {without:.0%}; "
        f"malignant: {int(counts[~benign].min())} - {int(counts[~benign].max())} spicules"
    )


def bright_fraction() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=400, seed=3)
    images = ds.render(range(400))
    centre = images[:, 0, 16:48, 16:48]
    bright = (centre > 0.6).flatten(1).float().mean(1)  # above -160 HU
    for name in ("spiculation", "diameter_mm"):
        v = ds.factors[name]
        lo, hi = torch.quantile(v, 0.1), torch.quantile(v, 0.9)
        print(
            f"bright fraction, {name} 10th -> 90th percentile: "
            f"{float(bright[v <= lo].mean()):.3f} -> {float(bright[v >= hi].mean()):.3f}"
        )


def batch_bound() -> None:
    ds = SyntheticNodules(NoduleSpec(), n=64, seed=3, output="hu")
    together = ds.render(range(64))
    alone = torch.cat([ds.render([i]) for i in range(64)])
    factors = ds.factors
    idx = torch.arange(64)
    a, _ = render_hu(factors, 3, idx, 64, chunk_size=1)
    b, _ = render_hu(factors, 3, idx, 64, chunk_size=128)
    print(
        f"batch 1 vs 64: max |diff| {float((together - alone).abs().max()):.2e} HU; "
        f"chunk 1 vs 128: {float((a - b).abs().max()):.2e} HU"
    )


def context_measurements() -> None:
    n = 400
    for size in (32, 128):
        ds = SyntheticNodules(NoduleSpec(), n=n, seed=3, output="hu", image_size=size)
        images, masks = ds.render(range(n), return_masks=True)
        # attenuation needs an uncalcified body pixel: leave out the few without one
        free = masks["body"] & ~masks["calcification"] & ~masks["vessels"] & ~masks["pleura"]
        keep = free.flatten(1).any(1)
        m = measure(
            images[keep], {k: v[keep] for k, v in masks.items()}, ds.pixel_size_mm[keep], units="hu"
        ).as_dict()
        f = {k: v[keep] for k, v in ds.factors.items()}
        print(
            f"at {size} px ({int(keep.sum())} of {n}): "
            + ", ".join(
                f"{k} {float((m[k] == f[k]).float().mean()):.1%}"
                for k in ("location", "fissure", "kernel", "site")
            )
            + ", noise_hu measured / set "
            f"median {float((m['noise_hu'] / f['noise_hu']).median()):.3f}"
        )
    ds = SyntheticNodules(NoduleSpec(), n=n, seed=3, output="hu")
    images, masks = ds.render(range(n), return_masks=True)
    m = measure(images, masks, ds.pixel_size_mm, units="hu").as_dict()
    f = ds.factors
    for name in ("location", "fissure", "kernel", "site"):
        hit = m[name] == f[name]
        per = ", ".join(
            f"{c} {float(hit[f[name] == i].float().mean()):.0%}"
            for i, c in enumerate(FACTORS[name].categories)
        )
        print(f"{name}: {float(hit.float().mean()):.1%} agree ({per})")
    ratio = m["noise_hu"] / f["noise_hu"]
    r = float(torch.corrcoef(torch.stack([m["noise_hu"], f["noise_hu"].float()]))[0, 1])
    print(
        f"noise_hu: measured / set median {float(ratio.median()):.3f}, 90 % within "
        f"{float((ratio - 1).abs().quantile(0.9)):.0%}, correlation {r:.2f}"
    )
    for i, c in enumerate(FACTORS["calcification"].categories[1:], start=1):
        pick = f["calcification"] == i
        err = m["calcification_hu"][pick] - f["calcification_hu"][pick]
        print(
            f"calcification_hu, {c} ({int(pick.sum())}): median error {float(err.median()):.0f}"
            f" HU, median |error| {float(err.abs().median()):.0f} HU"
        )


def ten_million() -> None:
    import pickle
    import resource
    import time

    t0 = time.perf_counter()
    ds = SyntheticNodules(NoduleSpec().with_shortcut("site", 0.9), n=10_000_000, seed=0)
    built = time.perf_counter() - t0
    ds.render([0, 9_999_999])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"n = 10,000,000: built in {built * 1e3:.1f} ms, process peak {peak_mb:.0f} MB after "
        f"rendering two samples, pickled {len(pickle.dumps(ds))} bytes"
    )
    t0 = time.perf_counter()
    labels = ds.labels
    print(
        f"    the whole table on request: {time.perf_counter() - t0:.1f} s, "
        f"{labels.numel():,} labels, process peak "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    spicule_areas()
    benign_without_spicules()
    bright_fraction()
    batch_bound()
    context_measurements()
    ten_million()
