"""Vessels cross the slice: dots in an image, continuous tubes through a volume."""

from __future__ import annotations

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Fixed

QUIET = {"location": Fixed("isolated"), "fissure": Fixed("absent"), "noise_hu": Fixed(0.0)}


def test_through_plane_vessels_run_through_the_volume() -> None:
    few = NoduleSpec(marginals={**QUIET, "vessels": Fixed("few")})
    none = NoduleSpec(marginals={**QUIET, "vessels": Fixed("none")})
    masks = SyntheticNodules(few, n=6, seed=2, volume_size=32).render(range(6), return_masks=True)[
        1
    ]["vessels"][:, 0]
    empty = SyntheticNodules(none, n=6, seed=2, volume_size=32).render(range(6), return_masks=True)[
        1
    ]["vessels"][:, 0]
    assert not bool(empty.any())
    # far above and below the axial plane (11 mm) the in-plane vessels (<= 1 mm radius) are
    # gone and only the tubes crossing the slices remain, in every slice in between
    for k in range(4, 28):
        assert bool(masks[:, k].flatten(1).any(1).all()), k
    # a tube leans by at most 0.3 mm per mm: from slice to slice it moves under a voxel
    # (away from the axial plane, where the in-plane vessels add to the mask)
    for part in (masks[:, 4:15].float(), masks[:, 18:29].float()):
        overlap = (part[:, 1:] * part[:, :-1]).sum((2, 3)) / part[:, :-1].sum((2, 3))
        assert float(overlap.min()) > 0.5
