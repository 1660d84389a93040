"""nodulebench.stats against scipy, against definitions written here, and on planted data."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from nodulebench import stats
from nodulebench.stats import (
    compare_all,
    group_accuracy,
    holm,
    mean_interval,
    paired_comparison,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def test_docstring_examples() -> None:
    result = doctest.testmod(stats, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_mean_interval_matches_scipy(values: list[float], confidence: float) -> None:
    r = mean_interval(values, confidence=confidence)
    data = np.array(values)
    assert r.mean == pytest.approx(data.mean(), abs=1e-9)
    sem = sps.sem(data)
    if sem == 0:
        assert r.low == pytest.approx(r.mean) and r.high == pytest.approx(r.mean)
        return
    low, high = sps.t.interval(confidence, len(values) - 1, loc=data.mean(), scale=sem)
    assert r.low == pytest.approx(low, rel=1e-9, abs=1e-9)
    assert r.high == pytest.approx(high, rel=1e-9, abs=1e-9)
    assert r.std == pytest.approx(data.std(ddof=1), rel=1e-9, abs=1e-12)


def test_single_value_has_no_interval() -> None:
    r = mean_interval([0.7])
    assert (r.mean, r.low, r.high, r.std, r.half_width) == (0.7, None, None, None, None)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 10).flatmap(
        lambda n: st.tuples(
            st.lists(finite, min_size=n, max_size=n), st.lists(finite, min_size=n, max_size=n)
        )
    )
)
def test_paired_comparison_matches_scipy(pair: tuple[list[float], list[float]]) -> None:
    a, b = pair
    differences = np.array(a) - np.array(b)
    if differences.std(ddof=1) <= 1e-9 * max(1.0, abs(differences.mean())):
        return  # the degenerate case is tested below
    c = paired_comparison(a, b)
    reference = sps.ttest_rel(a, b)
    assert c.p_value == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
    assert c.difference == pytest.approx(differences.mean(), abs=1e-9)
    low, high = sps.t.interval(0.95, len(a) - 1, loc=differences.mean(), scale=sps.sem(differences))
    assert (c.low, c.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert c.effect_size == pytest.approx(differences.mean() / differences.std(ddof=1), rel=1e-9)


def test_paired_comparison_without_spread() -> None:
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (same.p_value, same.effect_size, same.difference) == (1.0, 0.0, 0.0)
    shifted = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    # The exact sign test: three of three the same way, two-sided.
    assert shifted.p_value == pytest.approx(0.25) and shifted.effect_size == math.inf
    assert shifted.difference == pytest.approx(0.1)


def holm_by_definition(p: list[float]) -> list[float]:
    """Reject sequentially: the k-th smallest is compared with alpha / (m - k)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    out = [0.0] * m
    best = 0.0
    for k, i in enumerate(order):
        best = max(best, min(1.0, (m - k) * p[i]))
        out[i] = best
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=15))
def test_holm_matches_the_step_down_rule(p: list[float]) -> None:
    adjusted = holm(p)
    assert adjusted == pytest.approx(holm_by_definition(p))
    # The adjusted values keep the order of the raw ones and never fall below them.
    for raw, adj in zip(p, adjusted, strict=True):
        assert adj >= raw
    for alpha in (0.01, 0.05, 0.2):
        rejected = {i for i, v in enumerate(adjusted) if v <= alpha}
        m = len(p)
        expected: set[int] = set()
        for k, i in enumerate(sorted(range(m), key=lambda j: p[j])):
            if p[i] > alpha / (m - k):
                break
            expected.add(i)
        assert rejected == expected


def test_planted_differences_are_detected_and_nulls_are_not() -> None:
    rng = np.random.default_rng(2024)
    families, seeds = 400, 5
    false_families = 0
    detected = 0
    for _ in range(families):
        seed_luck = rng.normal(0.8, 0.05, seeds)  # shared by the losses of one seed
        conditions = {
            "null_a": seed_luck + rng.normal(0, 0.01, seeds),
            "null_b": seed_luck + rng.normal(0, 0.01, seeds),
            "better": seed_luck + 0.05 + rng.normal(0, 0.01, seeds),
        }
        results = {
            (r.a, r.b): r for r in compare_all({k: v.tolist() for k, v in conditions.items()})
        }
        false_families += results["null_a", "null_b"].rejected
        detected += (
            results["null_a", "better"].better == "better"
            and results["null_b", "better"].better == "better"
        )
    # The null pair is rejected at most at the nominal rate (Holm is conservative), the
    # planted 0.05 difference (5 x the noise) nearly always, despite seed luck 5 x larger.
    assert false_families / families <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / families)
    assert detected / families >= 0.95


def test_group_accuracy_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 2, (200,), generator=g)
    labels = torch.randint(0, 2, (200,), generator=g)
    groups = torch.randint(0, 3, (200,), generator=g)
    r = group_accuracy(predictions, labels, groups, ["x", "y", "z", "never"])
    for k, name in enumerate("xyz"):
        members = [i for i in range(200) if groups[i] == k]
        hits = sum(int(predictions[i] == labels[i]) for i in members)
        assert r.per_group[name] == pytest.approx(hits / len(members))
        assert r.counts[name] == len(members)
    assert "never" not in r.per_group
    assert r.worst == min(r.per_group.values())
    assert r.per_group[r.worst_group] == r.worst


def test_group_accuracy_finds_the_planted_worst_group() -> None:
    labels = torch.tensor([0] * 50 + [1] * 50)
    groups = torch.tensor([0] * 50 + [1] * 40 + [2] * 10)
    predictions = labels.clone()
    predictions[90:97] = 0  # 7 of the 10 in group 2 wrong
    r = group_accuracy(predictions, labels, groups, ["a", "b", "c"])
    assert r.worst_group == "c" and r.worst == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: mean_interval([]), ValueError, "at least 1 value"),
        (lambda: mean_interval([0.1, float("nan")]), ValueError, "finite"),
        (lambda: mean_interval("0.1"), TypeError, "sequence of real numbers"),  # type: ignore[arg-type]
        (lambda: mean_interval([True, 0.1]), TypeError, "real numbers; got True"),
        (lambda: mean_interval([0.1, 0.2], confidence=1.0), ValueError, "confidence"),
        (lambda: paired_comparison([0.1], [0.2]), ValueError, "at least 2"),
        (lambda: paired_comparison([0.1, 0.2], [0.1, 0.2, 0.3]), ValueError, "one value per seed"),
        (lambda: holm([0.5, 1.5]), ValueError, "p_values must lie in [0, 1]"),
        (lambda: compare_all({"a": [0.1, 0.2], "b": [0.1, 0.2]}, alpha=0), ValueError, "alpha"),
        (
            lambda: group_accuracy(torch.tensor([0.5]), torch.tensor([0]), torch.tensor([0])),
            TypeError,
            "predictions must have an integer dtype",
        ),
        (
            lambda: group_accuracy(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0])),
            ValueError,
            "same length",
        ),
        (
            lambda: group_accuracy(torch.tensor([0]), torch.tensor([0]), torch.tensor([-1])),
            ValueError,
            "groups must be >= 0",
        ),
        (
            lambda: group_accuracy(torch.tensor([0]), torch.tensor([0]), torch.tensor([2]), ["a"]),
            ValueError,
            "names must name every group",
        ),
        (
            lambda: group_accuracy(
                torch.tensor([], dtype=torch.long),
                torch.tensor([], dtype=torch.long),
                torch.tensor([], dtype=torch.long),
            ),
            ValueError,
            "N = 0",
        ),
    ],
)
def test_bad_input_is_named(call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_import_nodulebench_does_not_load_scipy() -> None:
    import subprocess
    import sys

    code = "import sys, nodulebench, nodulebench.stats; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
