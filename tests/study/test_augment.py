"""The views of contrastive training are in-plane symmetries, for images and volumes alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.augment import dihedral_views, rescan_views


def dihedral_group(array: np.ndarray) -> list[np.ndarray]:
    """The eight symmetries of the last two axes, by numpy (an independent reference)."""
    rotations = [np.rot90(array, k, axes=(-2, -1)) for k in range(4)]
    return rotations + [np.flip(r, axis=-1) for r in rotations]


@pytest.mark.parametrize("shape", [(6, 1, 8, 8), (6, 1, 5, 8, 8), (6, 2, 3, 4, 4)])
def test_each_view_is_one_symmetry_of_the_last_two_axes(shape: tuple[int, ...]) -> None:
    # Distinct values everywhere, so that the eight symmetries give eight different arrays.
    images = torch.randperm(int(np.prod(shape)), generator=torch.Generator().manual_seed(0))
    images = images.reshape(shape).float()
    views = dihedral_views(images, 3, torch.Generator().manual_seed(1))
    assert views.shape == (shape[0], 3, *shape[1:])
    seen = set()
    for b in range(shape[0]):
        group = dihedral_group(images[b].numpy())
        for v in range(3):
            matches = [k for k, g in enumerate(group) if np.array_equal(views[b, v].numpy(), g)]
            assert len(matches) == 1, (b, v)  # one symmetry, the same for every slice
            seen.add(matches[0])
    assert len(seen) > 1


def test_volume_views_keep_every_slice_in_its_place() -> None:
    # Slice d of a view is the same in-plane symmetry of slice d: depth is never moved.
    volumes = torch.arange(2 * 4 * 6 * 6, dtype=torch.float32).reshape(2, 1, 4, 6, 6)
    views = dihedral_views(volumes, 2, torch.Generator().manual_seed(3))
    for d in range(4):
        sliced = dihedral_views(volumes[:, :, d], 2, torch.Generator().manual_seed(3))
        assert torch.equal(views[:, :, :, d], sliced)


def test_every_symmetry_is_drawn_and_views_repeat_with_the_generator() -> None:
    volumes = torch.randn(64, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    first = dihedral_views(volumes, 2, torch.Generator().manual_seed(5))
    again = dihedral_views(volumes, 2, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    drawn = {
        next(
            k
            for k, g in enumerate(dihedral_group(volumes[b].numpy()))
            if np.array_equal(first[b, v].numpy(), g)
        )
        for b in range(64)
        for v in range(2)
    }
    assert drawn == set(range(8))


def test_rescan_views_take_view_v_from_rescan_v_plus_1_under_a_symmetry() -> None:
    n, size = 5, 4
    generator = torch.Generator().manual_seed(0)
    # Rescan k of image i: values that say (k, i) in every symmetry (constant per image,
    # plus distinct pixels so that the symmetry is identifiable).
    rescans = torch.stack(
        [
            torch.arange(size * size).reshape(1, 1, size, size)
            + 100.0 * k
            + 1000.0 * torch.arange(n).view(n, 1, 1, 1)
            for k in (1, 2, 3)
        ]
    )
    index = torch.tensor([3, 0, 4])
    views = rescan_views(rescans, index, 2, generator)
    assert views.shape == (3, 2, 1, size, size)
    for b, i in enumerate(index.tolist()):
        for v in range(2):
            group = dihedral_group(rescans[v, i].numpy())
            assert any(np.array_equal(views[b, v].numpy(), g) for g in group), (b, v)
    with pytest.raises(ValueError, match="needs 3 rescans"):
        rescan_views(rescans[:2], index, 3, generator)
