"""Loss values against loop-based references written here from the formulas, and gradcheck.

The references use plain Python floats and loops over anchors, pairs and triplets, so
they share no code (and no masking trick) with the library.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from nodulebench.losses import functional as LF

Rows = list[list[float]]


# ----------------------------------------------------------------------------- references


def flatten(embeddings: torch.Tensor, labels: torch.Tensor | None,
            normalize: bool) -> tuple[Rows, list[int], tuple[int, ...]]:
    """Rows sample-major, labels per row, and the leading shape, in Python floats."""
    batch = embeddings.shape[0]
    views = embeddings.shape[1] if embeddings.ndim == 3 else 1
    rows: Rows = []
    row_labels: list[int] = []
    for b in range(batch):
        for v in range(views):
            vec = embeddings[b, v] if embeddings.ndim == 3 else embeddings[b]
            values = [float(x) for x in vec]
            if normalize:
                norm = math.sqrt(sum(x * x for x in values))
                values = [x / norm for x in values]
            rows.append(values)
            row_labels.append(b if labels is None else int(labels[b]))
    return rows, row_labels, tuple(embeddings.shape[:-1])


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def dist(a: list[float], b: list[float], kind: str = "euclidean") -> float:
    if kind == "cosine":
        return 1.0 - dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))
    sq = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    return sq if kind == "squared_euclidean" else math.sqrt(sq)


def reduce(losses: list[float], valid: list[bool], reduction: str,
           shape: tuple[int, ...]) -> torch.Tensor:
    if reduction == "none":
        values = [x if ok else 0.0 for x, ok in zip(losses, valid, strict=True)]
        return torch.tensor(values, dtype=torch.float64).reshape(shape)
    kept = [x for x, ok in zip(losses, valid, strict=True) if ok]
    if not kept:
        return torch.tensor(0.0, dtype=torch.float64)
    total = sum(kept)
    return torch.tensor(total if reduction == "sum" else total / len(kept), dtype=torch.float64)


def ref_supcon(embeddings: torch.Tensor, labels: torch.Tensor | None, *, temperature: float,
               variant: str = "out", base_temperature: float | None = None,
               normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    z, y, shape = flatten(embeddings, labels, normalize)
    n = len(z)
    losses, valid = [], []
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        others = [a for a in range(n) if a != i]
        if not positives:
            losses.append(0.0)
            valid.append(False)
            continue
        s = {j: dot(z[i], z[j]) / temperature for j in others}
        log_denominator = math.log(sum(math.exp(s[a]) for a in others))
        if variant == "out":
            loss = -sum(s[p] - log_denominator for p in positives) / len(positives)
        else:
            mean_exp = sum(math.exp(s[p]) for p in positives) / len(positives)
            loss = -math.log(mean_exp) + log_denominator
        if base_temperature is not None:
            loss *= temperature / base_temperature
        losses.append(loss)
        valid.append(True)
    return reduce(losses, valid, reduction, shape)


def ref_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 1.0,
                    normalize: bool = False, reduction: str = "mean") -> torch.Tensor:
    z, y, shape = flatten(embeddings, labels, normalize)
    n = len(z)
    losses = []
    for i in range(n):
        total = 0.0
        for j in range(n):
            if j == i:
                continue
            d = dist(z[i], z[j])
            total += 0.5 * d * d if y[i] == y[j] else 0.5 * max(0.0, margin - d) ** 2
        losses.append(total / max(n - 1, 1))
    return reduce(losses, [n >= 2] * n, reduction, shape)


def ref_triplet(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2,
                distance: str = "euclidean", mining: str = "hard", normalize: bool = True,
                reduction: str = "mean") -> torch.Tensor:
    z, y, shape = flatten(embeddings, labels, normalize)
    n = len(z)
    losses, counts, valid = [], [], []
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        neg = [k for k in range(n) if y[k] != y[i]]
        ok = bool(pos) and bool(neg)
        valid.append(ok)
        if not ok:
            losses.append(0.0)
            counts.append(0)
            continue
        d = {j: dist(z[i], z[j], distance) for j in range(n)}
        if mining == "hard":
            losses.append(max(0.0, max(d[p] for p in pos) - min(d[k] for k in neg) + margin))
        elif mining == "all":
            terms = [max(0.0, d[p] - d[k] + margin) for p in pos for k in neg]
            losses.append(sum(terms))
            counts.append(sum(1 for t in terms if t > 0))
        else:
            pair_losses = []
            for p in pos:
                farther = [d[k] for k in neg if d[k] > d[p]]
                chosen = min(farther) if farther else max(d[k] for k in neg)
                pair_losses.append(max(0.0, d[p] - chosen + margin))
            losses.append(sum(pair_losses) / len(pair_losses))
    if mining != "all":
        return reduce(losses, valid, reduction, shape)
    if reduction == "none":
        per = [s / c if c > 0 else 0.0 for s, c in zip(losses, counts, strict=True)]
        return torch.tensor(per, dtype=torch.float64).reshape(shape)
    total = sum(losses)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64)
    return torch.tensor(total / sum(counts) if sum(counts) else 0.0, dtype=torch.float64)


def ref_multi_similarity(embeddings: torch.Tensor, labels: torch.Tensor, *, alpha: float = 2.0,
                         beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
                         normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    z, y, shape = flatten(embeddings, labels, normalize)
    n = len(z)
    losses, valid = [], []
    for i in range(n):
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        neg = [k for k in range(n) if y[k] != y[i]]
        valid.append(bool(pos))
        if not pos:
            losses.append(0.0)
            continue
        s = {j: dot(z[i], z[j]) for j in range(n)}
        max_neg = max((s[k] for k in neg), default=-math.inf)
        min_pos = min(s[p] for p in pos)
        kept_pos = [p for p in pos if s[p] - epsilon < max_neg]
        kept_neg = [k for k in neg if s[k] + epsilon > min_pos]
        pos_term = math.log(1 + sum(math.exp(-alpha * (s[p] - base)) for p in kept_pos)) / alpha
        neg_term = math.log(1 + sum(math.exp(beta * (s[k] - base)) for k in kept_neg)) / beta
        losses.append(pos_term + neg_term)
    return reduce(losses, valid, reduction, shape)


def ref_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float,
                      weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    batch, classes = logits.shape
    w = [1.0] * classes if weight is None else [float(x) for x in weight]
    losses, denominator = [], 0.0
    for b in range(batch):
        row = [float(x) for x in logits[b]]
        log_norm = math.log(sum(math.exp(x) for x in row))
        target = int(targets[b])
        loss = 0.0
        for c in range(classes):
            q = (1 - label_smoothing) * (c == target) + label_smoothing / classes
            loss -= w[c] * q * (row[c] - log_norm)
        losses.append(loss)
        denominator += w[target]
    if reduction == "none":
        return torch.tensor(losses, dtype=torch.float64)
    total = sum(losses)
    return torch.tensor(total if reduction == "sum" else total / denominator, dtype=torch.float64)


# ----------------------------------------------------------------------------- cases


def make_batch(seed: int, batch: int, views: int | None, dim: int,
               classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, dim) if views is None else (batch, views, dim)
    embeddings = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return embeddings, labels


SHAPES = [(7, None, 5, 3), (5, 2, 4, 3), (6, 3, 3, 6)]  # (B, V, D, classes)
REDUCTIONS = ["mean", "sum", "none"]

Case = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], dict[str, object]]
CASES: dict[str, Case] = {
    "supcon-out": (LF.supcon_loss, ref_supcon, {"temperature": 0.1}),
    "supcon-in": (LF.supcon_loss, ref_supcon, {"temperature": 0.5, "variant": "in"}),
    "supcon-base": (LF.supcon_loss, ref_supcon,
                    {"temperature": 0.2, "base_temperature": 0.07, "normalize": False}),
    "contrastive": (LF.contrastive_loss, ref_contrastive, {"margin": 2.0}),
    "contrastive-norm": (LF.contrastive_loss, ref_contrastive,
                         {"margin": 1.0, "normalize": True}),
    "triplet-hard": (LF.triplet_margin_loss, ref_triplet, {"margin": 0.5}),
    "triplet-all": (LF.triplet_margin_loss, ref_triplet, {"mining": "all", "margin": 0.5}),
    "triplet-semihard": (LF.triplet_margin_loss, ref_triplet,
                         {"mining": "semihard", "margin": 0.3}),
    "triplet-all-sq-raw": (LF.triplet_margin_loss, ref_triplet,
                           {"mining": "all", "distance": "squared_euclidean",
                            "normalize": False, "margin": 1.0}),
    "triplet-hard-cos-raw": (LF.triplet_margin_loss, ref_triplet,
                             {"distance": "cosine", "normalize": False}),
    "triplet-semihard-cos": (LF.triplet_margin_loss, ref_triplet,
                             {"mining": "semihard", "distance": "cosine"}),
    "multi-similarity": (LF.multi_similarity_loss, ref_multi_similarity, {}),
    "multi-similarity-soft": (LF.multi_similarity_loss, ref_multi_similarity,
                              {"alpha": 1.0, "beta": 5.0, "base": 0.0, "epsilon": 0.5}),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_loop_reference(name: str, shape: tuple[int, int | None, int, int],
                                reduction: str) -> None:
    fn, ref, kwargs = CASES[name]
    for seed in range(2):
        embeddings, labels = make_batch(seed, *shape)
        got = fn(embeddings, labels, reduction=reduction, **kwargs)
        want = ref(embeddings, labels, reduction=reduction, **kwargs)
        assert got.dtype == torch.float64
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_supcon_without_labels_matches_reference(reduction: str) -> None:
    embeddings, _ = make_batch(3, 5, 3, 4, 1)
    got = LF.supcon_loss(embeddings, None, temperature=0.3, reduction=reduction)
    want = ref_supcon(embeddings, None, temperature=0.3, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_reference(smoothing: float, weighted: bool,
                                         reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1, 1, 2, 0])
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    got = LF.cross_entropy_loss(logits, targets, label_smoothing=smoothing, weight=weight,
                                reduction=reduction)
    want = ref_cross_entropy(logits, targets, label_smoothing=smoothing, weight=weight,
                             reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


GRAD_CASES = [
    (LF.supcon_loss, {"temperature": 0.5}),
    (LF.supcon_loss, {"temperature": 0.5, "variant": "in", "base_temperature": 0.7}),
    (LF.contrastive_loss, {"margin": 3.0}),
    (LF.triplet_margin_loss, {"mining": "hard", "margin": 1.0}),
    (LF.triplet_margin_loss, {"mining": "all", "margin": 1.0, "distance": "cosine"}),
    (LF.triplet_margin_loss, {"mining": "semihard", "margin": 1.0,
                              "distance": "squared_euclidean"}),
    (LF.multi_similarity_loss, {"beta": 10.0}),
]


@pytest.mark.parametrize(("fn", "kwargs"), GRAD_CASES,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_gradcheck_float64(fn: Callable[..., torch.Tensor], kwargs: dict[str, object]) -> None:
    embeddings, _ = make_batch(11, 4, 2, 3, 2)
    labels = torch.tensor([0, 1, 0, 1])
    embeddings.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, **kwargs), (embeddings,))
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, reduction="none", **kwargs),
                                    (embeddings,))


def test_gradcheck_cross_entropy() -> None:
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 2, 1, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: LF.cross_entropy_loss(x, targets, label_smoothing=0.1, weight=weight),
        (logits,))


def test_ntxent_two_views_matches_reference() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    got = LF.ntxent_loss(a, b, temperature=0.5, reduction="none")
    want = ref_supcon(torch.stack((a, b), dim=1), None, temperature=0.5, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
