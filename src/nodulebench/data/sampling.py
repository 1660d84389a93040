"""Draw the factor table and labels of a dataset from a spec, with exact group counts.

Every factor of sample ``i`` comes from one exogenous uniform ``u = hash(seed, i, factor)``
pushed through the marginal's inverse CDF. Labels and shortcut sides are *allocated*
(exact counts; which samples get which is decided by sorting hash keys), and the
conditioned factors are drawn from their marginal restricted to the allocated side, from
the same ``u``. No global RNG is read or written.
"""

from __future__ import annotations

import math
import zlib

import torch

from . import rng
from .distributions import ByCategory, Distribution, Split, draw
from .factors import FACTORS
from .spec import NoduleSpec

__all__ = ["derive_children", "exogenous_uniforms", "label_coins", "sample_factors"]

_LABEL_STREAM = 2000
_NOISE_STREAM = 2001
_SHORTCUT_STREAM = 3000
_COIN_STREAM = 2002


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def exogenous_uniforms(seed: int, indices: torch.Tensor, factor: str) -> torch.Tensor:
    """``(N,)`` float64 exogenous uniforms of ``factor`` for the given sample indices.

    The stream is keyed by the factor's name, so adding a factor changes no other one.
    """
    stream = zlib.crc32(factor.encode())
    return rng.uniform(rng.key_words(seed, indices, stream), 1, torch.float64)[:, 0]


def label_coins(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float64 label coins of a probabilistic label rule (exogenous uniforms)."""
    return rng.uniform(rng.key_words(seed, indices, _COIN_STREAM), 1, torch.float64)[:, 0]


def _draw(dist: Distribution, factor: str, u: torch.Tensor,
          values: dict[str, torch.Tensor]) -> torch.Tensor:
    return draw(dist, FACTORS[factor], u, values)


def _draw_sided(dist: Distribution, split: Split, u: torch.Tensor,
                malignant_side: torch.Tensor) -> torch.Tensor:
    """Draw each sample from ``dist`` restricted to its allocated side of ``split``."""
    info = FACTORS[split.factor]
    out = torch.empty_like(u, dtype=torch.int64 if info.is_categorical else u.dtype)
    for side in (True, False):
        sel = malignant_side == side
        if bool(sel.any()):
            restricted = dist.restrict(split, side)  # type: ignore[union-attr]
            out[sel] = _draw(restricted, split.factor, u[sel], {})
    return out


def _ordering(seed: int, n: int, stream: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``(seed, stream)``."""
    keys = rng.key_words(seed, torch.arange(n), stream).long() & 0xFFFFFFFF
    return torch.argsort(keys, stable=True)


def _allocate(seed: int, members: torch.Tensor, count: int, stream: int) -> torch.Tensor:
    """Bool mask over ``members``: exactly ``count`` True, chosen by hash order."""
    order = _ordering(seed, members.numel(), stream)
    chosen = torch.zeros(members.numel(), dtype=torch.bool)
    chosen[order[:count]] = True
    return chosen


def sample_factors(spec: NoduleSpec, n: int, seed: int) -> tuple[dict[str, torch.Tensor],
                                                                   torch.Tensor]:
    """Factor table and labels of ``n`` samples (CPU tensors).

    Returns:
        ``(factors, labels)``: ``factors[name]`` is ``(n,)`` float32 for continuous factors
        and int64 codes for categorical ones; ``labels`` is ``(n,)`` int64.
    """
    idx = torch.arange(n)
    u = {name: exogenous_uniforms(seed, idx, name) for name in FACTORS}
    shortcut_names = set(spec.shortcut_factors)
    deferred = shortcut_names | {
        name for name, dist in spec.marginals.items()
        if isinstance(dist, ByCategory) and dist.parent in shortcut_names
    }
    values: dict[str, torch.Tensor] = {}
    rule = spec.label_rule
    labels: torch.Tensor | None = None
    if spec.malignant_fraction is not None and isinstance(rule, Split):
        n_malignant = _round_half_up(n * spec.malignant_fraction)
        labels = _allocate(seed, idx, n_malignant, _LABEL_STREAM).long()
        values[rule.factor] = _draw_sided(spec.marginals[rule.factor], rule, u[rule.factor],
                                          labels.bool())
    for name in FACTORS:
        if name not in values and name not in deferred:
            values[name] = _draw(spec.marginals[name], name, u[name], values)
    if labels is None:
        labels = spec.rule_labels(values, label_coins(seed, idx))
    if spec.label_noise > 0:
        flip = _allocate(seed, idx, _round_half_up(n * spec.label_noise), _NOISE_STREAM)
        labels = torch.where(flip, 1 - labels, labels)
    for j, sc in enumerate(spec.shortcuts):
        side = torch.zeros(n, dtype=torch.bool)
        for c in (0, 1):
            members = torch.nonzero(labels == c).flatten()
            agree = _allocate(seed, members, _round_half_up(
                members.numel() * (1 + sc.strength) / 2), _SHORTCUT_STREAM + 10 * j + c)
            side[members] = agree if c == 1 else ~agree
        name = sc.split.factor
        values[name] = _draw_sided(spec.marginals[name], sc.split, u[name], side)
    for name in FACTORS:
        if name not in values:
            values[name] = _draw(spec.marginals[name], name, u[name], values)
    factors = {
        name: values[name].long() if FACTORS[name].is_categorical else values[name].float()
        for name in FACTORS
    }
    return factors, labels.long()


def derive_children(spec: NoduleSpec, seed: int, indices: torch.Tensor,
                    factors: dict[str, torch.Tensor], changed: set[str]) -> set[str]:
    """Re-draw, in place, factors whose marginal depends on a changed parent.

    Keeps the exogenous uniform of each child, so an intervention on ``texture`` moves
    ``attenuation_hu`` into the new texture's range, as the structural model says.

    Returns:
        The names of the re-drawn factors.
    """
    redrawn: set[str] = set()
    for name, dist in spec.marginals.items():
        if (isinstance(dist, ByCategory) and name not in changed
                and (dist.parent in changed or dist.parent in redrawn)):
            u = exogenous_uniforms(seed, indices.cpu(), name).to(factors[dist.parent].device)
            factors[name] = dist.sample(u, factors, FACTORS[name]).to(factors[name].dtype)
            redrawn.add(name)
    return redrawn
