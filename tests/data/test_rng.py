"""The counter-based hash RNG against a pure-Python reference of lowbias32."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench.data import rng

M32 = 0xFFFFFFFF


def lowbias32_reference(x: int) -> int:
    """Chris Wellons' lowbias32 on Python ints (the published constants)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, M32), min_size=1, max_size=50))
def test_hash32_matches_reference(words: list[int]) -> None:
    signed = [w - (1 << 32) if w >= 1 << 31 else w for w in words]
    out = rng.hash32(torch.tensor(signed, dtype=torch.int32))
    assert [v & M32 for v in out.tolist()] == [lowbias32_reference(w) for w in words]


def test_uniform_range_moments_and_independence_of_order() -> None:
    idx = torch.arange(4000)
    key = rng.key_words(7, idx, 3)
    u = rng.uniform(key, 8)
    assert u.shape == (4000, 8)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.003
    # a permuted batch gives the permuted numbers: no hidden state
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rng.uniform(rng.key_words(7, idx[perm], 3), 8), u[perm])
    # streams and seeds decorrelate
    other = rng.uniform(rng.key_words(7, idx, 4), 8)
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], other[:, 0]]))[0, 1])) < 0.05
    assert not torch.equal(rng.uniform(rng.key_words(8, idx, 3), 8), u)


def test_uniform_pairs_are_coarse_uniforms() -> None:
    u = rng.uniform_pairs(rng.key_words(0, torch.arange(256), 1), 64)
    assert u.shape == (256, 128)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    rng.uniform(rng.key_words(0, torch.arange(10), 0), 3)
    assert torch.equal(state, torch.get_rng_state())


def uniform_reference(seed: int, index: int, stream: int, counter: int) -> float:
    """Key derivation and counter mixing written out on Python ints."""
    h = lowbias32_reference((seed & M32) ^ 0x9E3779B9)
    h = lowbias32_reference(h ^ ((seed >> 32) & M32))
    h = lowbias32_reference(h ^ index)
    h = lowbias32_reference(h ^ ((stream * 0x9E3779B9 + 0x632BE5AB) & M32))
    c = lowbias32_reference((counter * 0x9E3779B9 + 1) & M32)
    bits = lowbias32_reference(h ^ c)
    return ((bits >> 8) + 0.5) / 2**24


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**31 - 1), st.integers(0, 5000))
def test_uniform_matches_reference(seed: int, index: int, stream: int) -> None:
    u = rng.uniform(rng.key_words(seed, torch.tensor([index]), stream), 3, torch.float64)
    assert u[0].tolist() == [uniform_reference(seed, index, stream, c) for c in range(3)]


def test_golden_words() -> None:
    u = rng.uniform(rng.key_words(12345, torch.arange(16), 9), 4)
    digest = hashlib.sha256(u.numpy().tobytes()).hexdigest()[:16]
    assert digest == GOLDEN_UNIFORM


GOLDEN_UNIFORM = "ece79bd45493c1d5"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 65_537])
def test_permutation_is_a_bijection_keyed_by_seed_and_stream(n: int) -> None:
    from nodulebench.data.rng import permutation

    idx = torch.arange(n)
    p = permutation(5, 11, idx, n)
    assert torch.equal(torch.sort(p).values, idx)
    # per index: any subset gives the same positions
    sub = idx[torch.arange(0, n, 3)]
    assert torch.equal(permutation(5, 11, sub, n), p[sub])
    if n >= 64:
        assert not torch.equal(permutation(5, 12, idx, n), p)
        assert not torch.equal(permutation(6, 11, idx, n), p)
