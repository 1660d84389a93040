"""Counter-based random numbers written in integer torch ops.

A random number is a hash of ``(seed, index, stream, counter)``: no generator object,
no state, no global RNG. The same keys give the same bits on every device, in every
process and in any order, which is what makes a sample a pure function of
``(spec, seed, index)`` and lets a batch draw its noise in one vectorised call.

The mixer is Chris Wellons' ``lowbias32``, an avalanche hash of 32-bit words. Words live
in ``int32`` tensors: torch multiplies ``int32`` with two's-complement wrap-around on CPU
and CUDA, which is exactly multiplication modulo ``2**32``; right shifts are made logical
by masking the sign-extended bits.
"""

from __future__ import annotations

import torch

__all__ = [
    "centered_halves",
    "hash32",
    "key_words",
    "permutation",
    "rescan_key",
    "uniform",
    "uniform_pairs",
]

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # the same 32-bit pattern as a signed int32
_GOLDEN = 0x9E3779B9 - (1 << 32)  # odd constant that separates successive key words


def _to_int32(value: int) -> int:
    """The signed int32 with the same low 32 bits as ``value``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Mix 32-bit words held in an ``int32`` tensor (``lowbias32``); same shape out."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def key_words(seed: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """Hash ``(seed, index, stream)`` into one 32-bit key word per index.

    Args:
        seed: dataset seed (any Python int; its low 64 bits are used).
        index: ``(N,)`` integer tensor of sample indices (``< 2**31``).
        stream: small integer naming what the numbers are for (a factor, a noise field).

    Returns:
        ``(N,)`` ``int32`` tensor of key words.
    """
    idx = index.to(torch.int32)
    h = hash32(torch.full_like(idx, _to_int32(seed) ^ _GOLDEN))
    h = hash32(h ^ _to_int32(seed >> 32))
    h = hash32(h ^ idx)
    return hash32(h ^ _to_int32(stream * 0x9E3779B9 + 0x632BE5AB))


def rescan_key(key: torch.Tensor, rescan: int) -> torch.Tensor:
    """The key words of acquisition ``rescan`` of the noise keyed by ``key``.

    Rescan 0 is ``key`` itself (today's acquisition, bit for bit); rescan ``k >= 1`` mixes
    ``k`` into every word, so its numbers are independent of rescan 0's and of every other
    rescan's, and still a pure function of ``(seed, index, stream, k)``.
    """
    if rescan == 0:
        return key
    return hash32(key ^ _to_int32(rescan * 0x85EBCA6B + 0x27D4EB2F))


def _bits(key: torch.Tensor, count: int) -> torch.Tensor:
    counter = torch.arange(count, device=key.device, dtype=torch.int32)
    return hash32(key[:, None] ^ hash32(counter * _GOLDEN + 1)[None, :])


def uniform(key: torch.Tensor, count: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` uniform numbers in ``(0, 1)`` for each key word.

    Args:
        key: ``(N,)`` key words from :func:`key_words`.
        count: how many numbers per key (the counter runs ``0 .. count - 1``).
        dtype: floating dtype of the result.

    Returns:
        ``(N, count)`` tensor with 24 random bits each, offset by half a step so that
        neither 0 nor 1 occurs (safe under ``log`` and inverse CDFs).
    """
    bits = (_bits(key, count) >> 8) & 0xFFFFFF
    return (bits.to(dtype) + 0.5) * (1.0 / 16777216.0)


def uniform_pairs(
    key: torch.Tensor, count: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``2 * count`` coarse uniform numbers in ``(0, 1)`` per key: two 16-bit halves per hash.

    Half the hashing of :func:`uniform`, for white noise fields where 16 bits suffice.

    Returns:
        ``(N, 2 * count)`` tensor.
    """
    bits = _bits(key, count)
    halves = torch.stack(((bits >> 16) & 0xFFFF, bits & 0xFFFF), dim=-1).flatten(-2)
    return (halves.to(dtype) + 0.5) * (1.0 / 65536.0)


def centered_halves(
    key: torch.Tensor, count: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``2 * count`` uniform numbers in ``(-0.5, 0.5)`` per key, 16 bits each.

    The hashed 32-bit words are reinterpreted as pairs of signed 16-bit integers (a view,
    no arithmetic), so white-noise fields cost one hash per two pixels. The pairing follows
    little-endian byte order, which CPUs and GPUs that torch supports share.

    Returns:
        ``(N, 2 * count)`` tensor.
    """
    halves = _bits(key, count).view(torch.int16)
    return (halves.to(dtype) + 0.5) * (1.0 / 65536.0)


def permutation(seed: int, stream: int, index: torch.Tensor, n: int) -> torch.Tensor:
    """Where each index lands under a pseudorandom permutation of ``range(n)``.

    A four-round Feistel network on the smallest even number of bits that covers ``n``,
    keyed by ``(seed, stream)``, with cycle walking (re-applied until the value falls below
    ``n``, at most four times on average): a bijection evaluated per index, so exact
    allocations ("the first ``k`` of a random order") need no pass over all ``n``.

    Args:
        seed: dataset seed.
        stream: what the permutation is for.
        index: ``(N,)`` integer tensor of values in ``[0, n)``.
        n: size of the permuted range, ``< 2**32``.

    Returns:
        ``(N,)`` int64 positions in ``[0, n)``.
    """
    if n <= 1:
        return torch.zeros_like(index, dtype=torch.int64)
    bits = max(2, (n - 1).bit_length())
    half = (bits + 1) // 2
    mask = (1 << half) - 1
    # int32 arithmetic while the whole domain fits in 31 bits (twice as fast as int64)
    x = index.to(torch.int32 if half <= 15 else torch.int64)
    keys = key_words(seed, torch.arange(4, device=index.device), stream)

    def rounds(v: torch.Tensor) -> torch.Tensor:
        left, right = v >> half, v & mask
        for r in range(4):
            f = hash32(right.to(torch.int32) ^ keys[r]).to(v.dtype) & mask
            left, right = right, left ^ f
        return (left << half) | right

    x = rounds(x)
    outside = x >= n
    while bool(outside.any()):
        x[outside] = rounds(x[outside])
        outside = x >= n
    return x.to(torch.int64)
