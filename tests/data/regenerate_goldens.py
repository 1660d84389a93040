"""Regenerate the data goldens after a deliberate change to the renderer.

Run ``PYTHONPATH=src python tests/data/regenerate_goldens.py``: it rewrites
``reference_2d_v3.npz`` and prints the values to paste into ``test_dataset.py``. Say in
CHANGELOG.md what changed and why; a golden is only worth what that sentence says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nodulebench import NoduleSpec, SyntheticNodules

HERE = Path(__file__).parent


def main() -> None:
    context = {
        "location": torch.tensor([0, 1, 2] * 4),
        "calcification": torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 3, 6, 5, 1]),
        "fissure": torch.tensor([0, 1] * 6),
        "vessels": torch.tensor([2, 1, 0] * 4),
        "texture": torch.tensor([0, 1, 2, 1] * 3),
    }
    ds = SyntheticNodules(n=64, seed=7, image_size=32, output="hu")
    hu, masks = ds.render(range(12), return_masks=True, overrides=context)
    arrays = {"hu": hu.numpy(), **{k: v.numpy() for k, v in masks.items()}}
    np.savez_compressed(HERE / "reference_2d_v3.npz", **arrays)  # type: ignore[arg-type]
    spec = NoduleSpec().with_shortcut("diameter_mm", 0.8)
    golden = SyntheticNodules(spec, n=64, seed=2024, image_size=32, output="hu")
    images = golden.render([0, 17, 63])
    print("GOLDEN_MEANS =", [round(float(v), 3) for v in images.mean((1, 2, 3))])
    print("GOLDEN_CENTRES =", [round(float(v), 3) for v in images[:, 0, 16, 16]])


if __name__ == "__main__":
    main()
