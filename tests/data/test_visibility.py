"""Covariate shifts and how visible they leave the cause (spicule contrast-to-noise)."""

from __future__ import annotations

import pytest
import torch

from nodulebench import NoduleSpec
from nodulebench.data import Fixed, spicule_cnr
from nodulebench.data.spec import (
    COVARIATE_CNR_FRACTION,
    DEGRADED_CNR_FRACTION,
    DEGRADED_SHIFT,
    TEST_DISTRIBUTIONS,
)


def test_the_covariate_shift_keeps_the_stated_share_of_the_cause() -> None:
    train = NoduleSpec()
    base = spicule_cnr(train, n=96, seed=4)
    kept = spicule_cnr(train.covariate_shift(), n=96, seed=4) / base
    lost = spicule_cnr(train.degraded(), n=96, seed=4) / base
    assert kept == pytest.approx(COVARIATE_CNR_FRACTION, abs=0.06)
    assert lost == pytest.approx(DEGRADED_CNR_FRACTION, abs=0.08)
    assert lost < kept < 1.0
    assert f"about {COVARIATE_CNR_FRACTION:.2f}" in train.covariate_shift().describe()
    assert f"about {DEGRADED_CNR_FRACTION:.2f}" in train.degraded().describe()
    assert "contrast-to-noise" not in train.describe()


def test_cnr_reads_a_planted_noise_level() -> None:
    # same objects and kernel, twice the noise: half the contrast-to-noise
    quiet = NoduleSpec(marginals={"noise_hu": Fixed(20.0), "kernel": Fixed("smooth")})
    loud = quiet.with_marginals(noise_hu=Fixed(40.0))
    ratio = spicule_cnr(loud, n=32) / spicule_cnr(quiet, n=32)
    assert ratio == pytest.approx(0.5, rel=0.06)


def test_degraded_is_named_and_not_a_default_test() -> None:
    train = NoduleSpec().with_shortcut("diameter_mm", 0.8)
    degraded = train.degraded()
    assert degraded.name == "degraded" and degraded.shortcuts == train.shortcuts
    for name, dist in DEGRADED_SHIFT.items():
        assert degraded.marginals[name] == dist
    assert "degraded" not in train.test_distributions()
    assert "degraded" not in TEST_DISTRIBUTIONS


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"n": 2}, ValueError), ({"image_size": 8}, ValueError), ({"n": 4.0}, TypeError)],
)
def test_spicule_cnr_names_bad_arguments(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        spicule_cnr(NoduleSpec(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spec"):
        spicule_cnr(torch.zeros(1))  # type: ignore[arg-type]
