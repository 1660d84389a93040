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
from .labels import LabelFunction, rule_inputs
from .spec import NoduleSpec

__all__ = [
    "RuleTruth",
    "derive_children",
    "exogenous_uniforms",
    "factor_rows",
    "is_lazy",
    "label_coins",
    "label_rows",
    "sample_factors",
    "sample_labels",
]

_LABEL_STREAM = 2000
_NOISE_STREAM = 2001
_SHORTCUT_STREAM = 3000
_COIN_STREAM = 2002
_CHUNK = 1 << 18  # samples per chunk when the whole table is built


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


def _draw(
    dist: Distribution, factor: str, u: torch.Tensor, values: dict[str, torch.Tensor]
) -> torch.Tensor:
    return draw(dist, FACTORS[factor], u, values)


def _draw_sided(
    dist: Distribution, split: Split, u: torch.Tensor, malignant_side: torch.Tensor
) -> torch.Tensor:
    """Draw each sample from ``dist`` restricted to its allocated side of ``split``."""
    info = FACTORS[split.factor]
    out = torch.empty_like(u, dtype=torch.int64 if info.is_categorical else u.dtype)
    for side in (True, False):
        sel = malignant_side == side
        if bool(sel.any()):
            restricted = dist.restrict(split, side)  # type: ignore[union-attr]
            out[sel] = _draw(restricted, split.factor, u[sel], {})
    return out


class _Allocation:
    """Exact group counts for an index set: labels, label noise, shortcut sides.

    With allocated labels (a ``Split`` rule and a ``malignant_fraction``) every count is
    known in advance, so each index finds its place by pseudorandom permutations
    (:func:`~nodulebench.data.rng.permutation`): sample ``i`` is malignant iff its position
    in a permutation of ``range(n)`` is below the malignant count, its rank within its
    class is that position shifted, and label noise and shortcut sides are, per class, the
    first ``k`` of further permutations of those ranks. No pass over the other samples.
    """

    def __init__(self, spec: NoduleSpec, n: int, seed: int, idx: torch.Tensor) -> None:
        self.spec, self.seed = spec, seed
        n_malignant = _round_half_up(n * float(spec.malignant_fraction))  # type: ignore[arg-type]
        position = rng.permutation(seed, _LABEL_STREAM, idx, n)
        self.truth = (position < n_malignant).long()
        rank = torch.where(self.truth == 1, position, position - n_malignant)
        sizes = (n - n_malignant, n_malignant)
        self.labels, self.rank, self.sizes = self._noisy(rank, sizes)

    def _noisy(
        self, rank: torch.Tensor, sizes: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Flip ``round(n_c * label_noise)`` labels of each class; ranks in the new classes."""
        truth = self.truth
        if self.spec.label_noise == 0:
            return truth, rank, sizes
        flips = tuple(_round_half_up(size * self.spec.label_noise) for size in sizes)
        order = torch.empty_like(rank)
        for c in (0, 1):
            sel = truth == c
            order[sel] = rng.permutation(self.seed, _NOISE_STREAM + 10 + c, rank[sel], sizes[c])
        flip_count = torch.tensor(flips)[truth]
        flipped = order < flip_count
        labels = torch.where(flipped, 1 - truth, truth)
        # kept members of class c first (ranks 0 ..), then those flipped into it
        kept_size = torch.tensor(sizes)[labels] - torch.tensor(flips)[labels]
        new_rank = torch.where(flipped, kept_size + order, order - flip_count)
        new_sizes = (sizes[0] - flips[0] + flips[1], sizes[1] - flips[1] + flips[0])
        return labels, new_rank, new_sizes

    def side(self, j: int, strength: float) -> torch.Tensor:
        """Malignant-looking side of shortcut ``j`` for each index (exact counts per class)."""
        agree = torch.zeros_like(self.labels, dtype=torch.bool)
        for c in (0, 1):
            sel = self.labels == c
            count = _round_half_up(self.sizes[c] * (1 + strength) / 2)
            agree[sel] = (
                rng.permutation(
                    self.seed, _SHORTCUT_STREAM + 10 * j + c, self.rank[sel], self.sizes[c]
                )
                < count
            )
        return torch.where(self.labels == 1, agree, ~agree)


def is_lazy(spec: NoduleSpec) -> bool:
    """Whether any sample's factors and label can be computed without the others.

    True with allocated labels (a ``Split`` rule and a ``malignant_fraction``: the default)
    and for any rule without shortcuts or label noise; otherwise the class counts that
    shortcuts and label noise allocate within need every label first (a
    :class:`RuleTruth`).
    """
    return _allocated(spec) or (not spec.shortcuts and spec.label_noise == 0)


def _allocated(spec: NoduleSpec) -> bool:
    return spec.malignant_fraction is not None and isinstance(spec.label_rule, Split)


def _rule_factors(spec: NoduleSpec) -> tuple[str, ...]:
    """The factors the label rule reads and the parents they are drawn from, in draw order."""
    if isinstance(spec.label_rule, LabelFunction):
        return tuple(FACTORS)  # a user function may read more than it declares
    need = set(rule_inputs(spec.label_rule))
    grown = True
    while grown:
        parents = {
            dist.parent
            for name in need
            if isinstance(dist := spec.marginals[name], ByCategory) and dist.parent not in need
        }
        need |= parents
        grown = bool(parents)
    return tuple(name for name in FACTORS if name in need)


def _rule_labels(spec: NoduleSpec, seed: int, idx: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 labels the rule gives (no noise), drawing only the factors it reads."""
    values: dict[str, torch.Tensor] = {}
    for name in _rule_factors(spec):
        values[name] = _draw(
            spec.marginals[name], name, exogenous_uniforms(seed, idx, name), values
        )
    return spec.rule_labels(values, label_coins(seed, idx)).long()


class RuleTruth:
    """The rule's labels of every sample, for specs that are not :func:`is_lazy`.

    Shortcuts and label noise allocate exact counts within the classes a non-``Split`` rule
    makes, so a sample's place in its class needs the labels before it. This holds them
    compactly: ``(n,)`` bool labels and an ``(n,)`` int32 running count of malignant ones
    (5 bytes a sample), built in chunks from the factors the rule reads (a chunk's working
    set at a time). Factor rows and labels of any index set then follow per index.

    Args:
        spec: the spec (its shortcuts and label noise are ignored here).
        n: number of samples, ``< 2**31``.
        seed: dataset seed.

    Example:
        >>> spec = NoduleSpec(malignant_fraction=None).with_shortcut("diameter_mm", 0.8)
        >>> truth = RuleTruth(spec, 100, 0)
        >>> int(truth.truth.sum())  # the rule's malignant samples among the 100
        50
        >>> factors, labels = factor_rows(spec, 100, 0, torch.arange(10), truth)
        >>> labels.tolist()
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    """

    def __init__(self, spec: NoduleSpec, n: int, seed: int) -> None:
        plain = spec.replace(shortcuts=(), label_noise=0.0)
        self.n = n
        self.truth = torch.empty(n, dtype=torch.bool)
        for start in range(0, n, _CHUNK):
            idx = torch.arange(start, min(n, start + _CHUNK))
            self.truth[start : start + _CHUNK] = _rule_labels(plain, seed, idx).bool()
        self.malignant_through = torch.cumsum(self.truth, 0, dtype=torch.int32)
        ones = int(self.malignant_through[-1]) if n else 0
        self.sizes = (n - ones, ones)


class _RankedAllocation(_Allocation):
    """Exact counts for labels that come from the rule, per index, given every label."""

    def __init__(self, spec: NoduleSpec, seed: int, truth: RuleTruth, idx: torch.Tensor) -> None:
        self.spec, self.seed = spec, seed
        self.truth = truth.truth[idx].long()
        malignant_before = truth.malignant_through[idx].long() - self.truth
        # the sample's position among its class, in index order
        position = torch.where(self.truth == 1, malignant_before, idx - malignant_before)
        rank = torch.empty_like(position)
        for c in (0, 1):
            sel = self.truth == c
            rank[sel] = rng.permutation(seed, _LABEL_STREAM + 1 + c, position[sel], truth.sizes[c])
        self.labels, self.rank, self.sizes = self._noisy(rank, truth.sizes)


def _truth_for(spec: NoduleSpec, n: int, seed: int, truth: RuleTruth | None) -> RuleTruth | None:
    if is_lazy(spec):
        return None
    if truth is None:
        return RuleTruth(spec, n, seed)
    if truth.n != n:
        raise ValueError(f"truth must be the RuleTruth of {n} samples; got one of {truth.n}")
    return truth


def factor_rows(
    spec: NoduleSpec,
    n: int,
    seed: int,
    indices: torch.Tensor,
    truth: RuleTruth | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Factors and labels of some samples of an ``n``-sample dataset, computed per index.

    The result equals the rows ``indices`` of :func:`sample_factors`. A spec that is not
    :func:`is_lazy` needs its :class:`RuleTruth` (built here when not given: a pass over
    every label, so pass it when calling repeatedly).

    Returns:
        ``(factors, labels)`` as in :func:`sample_factors`, of length ``len(indices)``.
    """
    idx = indices.to("cpu", torch.int64)
    rule_truth = _truth_for(spec, n, seed, truth)
    allocation: _Allocation | None
    if rule_truth is not None:
        allocation = _RankedAllocation(spec, seed, rule_truth, idx)
    else:
        allocation = _Allocation(spec, n, seed, idx) if _allocated(spec) else None
    return _fill(spec, seed, idx, allocation)


def label_rows(
    spec: NoduleSpec,
    n: int,
    seed: int,
    indices: torch.Tensor,
    truth: RuleTruth | None = None,
) -> torch.Tensor:
    """``(N,)`` int64 labels of some samples, equal to those of :func:`factor_rows`.

    Draws no factor the label does not depend on: allocated labels need none, a rule the
    factors it reads.
    """
    idx = indices.to("cpu", torch.int64)
    rule_truth = _truth_for(spec, n, seed, truth)
    if rule_truth is not None:
        return _RankedAllocation(spec, seed, rule_truth, idx).labels.long()
    if _allocated(spec):
        return _Allocation(spec, n, seed, idx).labels.long()
    return _rule_labels(spec, seed, idx)


def sample_labels(
    spec: NoduleSpec, n: int, seed: int, truth: RuleTruth | None = None
) -> torch.Tensor:
    """``(n,)`` int64 labels of every sample, in chunks (equal to :func:`sample_factors`'s).

    Example:
        >>> labels = sample_labels(NoduleSpec(), 10_000, 0)
        >>> int(labels.sum())  # the default spec allocates exactly half malignant
        5000
    """
    rule_truth = _truth_for(spec, n, seed, truth)
    labels = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, _CHUNK):
        idx = torch.arange(start, min(n, start + _CHUNK))
        labels[start : start + _CHUNK] = label_rows(spec, n, seed, idx, rule_truth)
    return labels


def _fill(
    spec: NoduleSpec, seed: int, idx: torch.Tensor, allocation: _Allocation | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Draw every factor of ``idx`` given the allocation (``None``: labels from the rule)."""
    u = {name: exogenous_uniforms(seed, idx, name) for name in FACTORS}
    shortcut_names = set(spec.shortcut_factors)
    deferred = shortcut_names | {
        name
        for name, dist in spec.marginals.items()
        if isinstance(dist, ByCategory) and dist.parent in shortcut_names
    }
    values: dict[str, torch.Tensor] = {}
    rule = spec.label_rule
    if spec.malignant_fraction is not None and allocation is not None and isinstance(rule, Split):
        values[rule.factor] = _draw_sided(
            spec.marginals[rule.factor], rule, u[rule.factor], allocation.truth.bool()
        )
    for name in FACTORS:
        if name not in values and name not in deferred:
            values[name] = _draw(spec.marginals[name], name, u[name], values)
    labels = (
        allocation.labels
        if allocation is not None
        else spec.rule_labels(values, label_coins(seed, idx))
    )
    for j, sc in enumerate(spec.shortcuts):
        assert allocation is not None  # is_lazy or the eager path provide one
        name = sc.split.factor
        values[name] = _draw_sided(
            spec.marginals[name], sc.split, u[name], allocation.side(j, sc.strength)
        )
    for name in FACTORS:
        if name not in values:
            values[name] = _draw(spec.marginals[name], name, u[name], values)
    factors = {
        name: values[name].long() if FACTORS[name].is_categorical else values[name].float()
        for name in FACTORS
    }
    return factors, labels.long()


def sample_factors(
    spec: NoduleSpec, n: int, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Factor table and labels of ``n`` samples (CPU tensors), built in chunks.

    Returns:
        ``(factors, labels)``: ``factors[name]`` is ``(n,)`` float32 for continuous factors
        and int64 codes for categorical ones; ``labels`` is ``(n,)`` int64.
    """
    idx = torch.arange(n)
    truth = _truth_for(spec, n, seed, None)
    # row by row in chunks: the working set stays a chunk's, the result is the table
    first, first_labels = factor_rows(spec, n, seed, idx[:_CHUNK], truth)
    if n <= _CHUNK:
        return first, first_labels
    factors = {name: torch.empty(n, dtype=v.dtype) for name, v in first.items()}
    labels = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, _CHUNK):
        part, part_labels = (
            (first, first_labels)
            if start == 0
            else factor_rows(spec, n, seed, idx[start : start + _CHUNK], truth)
        )
        for name, v in part.items():
            factors[name][start : start + _CHUNK] = v
        labels[start : start + _CHUNK] = part_labels
    return factors, labels


def derive_children(
    spec: NoduleSpec,
    seed: int,
    indices: torch.Tensor,
    factors: dict[str, torch.Tensor],
    changed: set[str],
) -> set[str]:
    """Re-draw, in place, factors whose marginal depends on a changed parent.

    Keeps the exogenous uniform of each child, so an intervention on ``texture`` moves
    ``attenuation_hu`` into the new texture's range, as the structural model says.

    Returns:
        The names of the re-drawn factors.
    """
    redrawn: set[str] = set()
    for name, dist in spec.marginals.items():
        if (
            isinstance(dist, ByCategory)
            and name not in changed
            and (dist.parent in changed or dist.parent in redrawn)
        ):
            u = exogenous_uniforms(seed, indices.cpu(), name).to(factors[dist.parent].device)
            factors[name] = dist.sample(u, factors, FACTORS[name]).to(factors[name].dtype)
            redrawn.add(name)
    return redrawn
