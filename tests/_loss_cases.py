"""The one independent reference per loss, and the cases, shared by the whole test suite.

The references use plain Python floats and loops over anchors, pairs and triplets, so
they share no code (and no masking trick) with the library. Each takes the loss's
inputs as the library does, including a reference set (``ref_emb``, ``ref_labels``):
then the anchors are compared with the reference rows, and no pair is a self-pair.
"""

from __future__ import annotations

import math

import torch

Rows = list[list[float]]
Tensor = torch.Tensor


def flatten(
    embeddings: Tensor, labels: Tensor | None, normalize: bool
) -> tuple[Rows, list[int], tuple[int, ...]]:
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


def pair_sets(
    embeddings: Tensor,
    labels: Tensor | None,
    normalize: bool,
    ref_emb: Tensor | None,
    ref_labels: Tensor | None,
) -> tuple[Rows, list[int], Rows, list[int], bool, tuple[int, ...]]:
    """Anchors, their labels, columns, their labels, whether self-pairs exist, shape."""
    z, y, shape = flatten(embeddings, labels, normalize)
    if ref_emb is None:
        return z, y, z, y, True, shape
    c, yc, _ = flatten(ref_emb, ref_labels, normalize)
    return z, y, c, yc, False, shape


def others(i: int, m: int, has_self: bool) -> list[int]:
    """The columns anchor ``i`` is compared with."""
    return [j for j in range(m) if not (has_self and j == i)]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def dist(a: list[float], b: list[float], kind: str = "euclidean") -> float:
    if kind == "cosine":
        return 1.0 - dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))
    sq = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    return sq if kind == "squared_euclidean" else math.sqrt(sq)


def reduce(
    losses: list[float], valid: list[bool], reduction: str, shape: tuple[int, ...]
) -> Tensor:
    if reduction == "none":
        values = [x if ok else 0.0 for x, ok in zip(losses, valid, strict=True)]
        return torch.tensor(values, dtype=torch.float64).reshape(shape)
    kept = [x for x, ok in zip(losses, valid, strict=True) if ok]
    if not kept:
        return torch.tensor(0.0, dtype=torch.float64)
    total = sum(kept)
    return torch.tensor(total if reduction == "sum" else total / len(kept), dtype=torch.float64)


def ref_supcon(
    embeddings: Tensor,
    labels: Tensor | None,
    *,
    temperature: float,
    variant: str = "out",
    base_temperature: float | None = None,
    normalize: bool = True,
    reduction: str = "mean",
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> Tensor:
    z, y, c, yc, has_self, shape = pair_sets(embeddings, labels, normalize, ref_emb, ref_labels)
    losses, valid = [], []
    for i in range(len(z)):
        candidates = others(i, len(c), has_self)
        positives = [p for p in candidates if yc[p] == y[i]]
        if not positives:
            losses.append(0.0)
            valid.append(False)
            continue
        s = {j: dot(z[i], c[j]) / temperature for j in candidates}
        log_denominator = math.log(sum(math.exp(s[a]) for a in candidates))
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


def ref_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    normalize: bool = False,
    reduction: str = "mean",
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> Tensor:
    z, y, c, yc, has_self, shape = pair_sets(embeddings, labels, normalize, ref_emb, ref_labels)
    losses, valid = [], []
    for i in range(len(z)):
        candidates = others(i, len(c), has_self)
        total = 0.0
        for j in candidates:
            d = dist(z[i], c[j])
            total += 0.5 * d * d if y[i] == yc[j] else 0.5 * max(0.0, margin - d) ** 2
        losses.append(total / max(len(candidates), 1))
        valid.append(bool(candidates))
    return reduce(losses, valid, reduction, shape)


def ref_contrastive_pml(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    pos_margin: float = 0.0,
    normalize: bool = False,
    reduction: str = "mean",
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
    form: str = "pml",
) -> Tensor:
    """pytorch-metric-learning's ContrastiveLoss, from its definition (v2.x).

    Over every ordered pair (i, j), i != j: positive pairs give relu(d - pos_margin),
    negative pairs relu(neg_margin - d), unsquared; its default reducer (AvgNonZero)
    averages each kind over its non-zero terms and adds the two averages.
    """
    assert form == "pml"
    z, y, c, yc, has_self, shape = pair_sets(embeddings, labels, normalize, ref_emb, ref_labels)
    pos_terms: list[list[float]] = [[] for _ in z]
    neg_terms: list[list[float]] = [[] for _ in z]
    for i in range(len(z)):
        for j in others(i, len(c), has_self):
            d = dist(z[i], c[j])
            if yc[j] == y[i]:
                pos_terms[i].append(max(0.0, d - pos_margin))
            else:
                neg_terms[i].append(max(0.0, margin - d))

    def mean_nonzero(terms: list[float]) -> float:
        nonzero = [t for t in terms if t > 0]
        return sum(nonzero) / len(nonzero) if nonzero else 0.0

    if reduction == "none":
        per = [mean_nonzero(p) + mean_nonzero(n) for p, n in zip(pos_terms, neg_terms, strict=True)]
        return torch.tensor(per, dtype=torch.float64).reshape(shape)
    every_pos = [t for terms in pos_terms for t in terms]
    every_neg = [t for terms in neg_terms for t in terms]
    if reduction == "sum":
        return torch.tensor(sum(every_pos) + sum(every_neg), dtype=torch.float64)
    return torch.tensor(mean_nonzero(every_pos) + mean_nonzero(every_neg), dtype=torch.float64)


def ref_triplet(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.2,
    distance: str = "euclidean",
    mining: str = "hard",
    normalize: bool = True,
    reduction: str = "mean",
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> Tensor:
    z, y, c, yc, has_self, shape = pair_sets(embeddings, labels, normalize, ref_emb, ref_labels)
    losses, counts, valid = [], [], []
    for i in range(len(z)):
        candidates = others(i, len(c), has_self)
        pos = [p for p in candidates if yc[p] == y[i]]
        neg = [k for k in candidates if yc[k] != y[i]]
        ok = bool(pos) and bool(neg)
        valid.append(ok)
        if not ok:
            losses.append(0.0)
            counts.append(0)
            continue
        d = {j: dist(z[i], c[j], distance) for j in candidates}
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
        per = [s / n if n > 0 else 0.0 for s, n in zip(losses, counts, strict=True)]
        return torch.tensor(per, dtype=torch.float64).reshape(shape)
    total = sum(losses)
    if reduction == "sum":
        return torch.tensor(total, dtype=torch.float64)
    return torch.tensor(total / sum(counts) if sum(counts) else 0.0, dtype=torch.float64)


def ref_multi_similarity(
    embeddings: Tensor,
    labels: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ref_emb: Tensor | None = None,
    ref_labels: Tensor | None = None,
) -> Tensor:
    z, y, c, yc, has_self, shape = pair_sets(embeddings, labels, normalize, ref_emb, ref_labels)
    losses, valid = [], []
    for i in range(len(z)):
        candidates = others(i, len(c), has_self)
        pos = [p for p in candidates if yc[p] == y[i]]
        neg = [k for k in candidates if yc[k] != y[i]]
        valid.append(bool(pos))
        if not pos:
            losses.append(0.0)
            continue
        s = {j: dot(z[i], c[j]) for j in candidates}
        max_neg = max((s[k] for k in neg), default=-math.inf)
        min_pos = min(s[p] for p in pos)
        kept_pos = [p for p in pos if s[p] - epsilon < max_neg]
        kept_neg = [k for k in neg if s[k] + epsilon > min_pos]
        pos_term = math.log(1 + sum(math.exp(-alpha * (s[p] - base)) for p in kept_pos)) / alpha
        neg_term = math.log(1 + sum(math.exp(beta * (s[k] - base)) for k in kept_neg)) / beta
        losses.append(pos_term + neg_term)
    return reduce(losses, valid, reduction, shape)


def ref_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    label_smoothing: float,
    weight: Tensor | None,
    reduction: str,
) -> Tensor:
    batch, classes = logits.shape
    w = [1.0] * classes if weight is None else [float(x) for x in weight]
    losses, denominator = [], 0.0
    for b in range(batch):
        row = [float(x) for x in logits[b]]
        log_norm = math.log(sum(math.exp(x) for x in row))
        target = int(targets[b])
        loss = 0.0
        for k in range(classes):
            q = (1 - label_smoothing) * (k == target) + label_smoothing / classes
            loss -= w[k] * q * (row[k] - log_norm)
        losses.append(loss)
        denominator += w[target]
    if reduction == "none":
        return torch.tensor(losses, dtype=torch.float64)
    total = sum(losses)
    return torch.tensor(total if reduction == "sum" else total / denominator, dtype=torch.float64)


def make_batch(
    seed: int, batch: int, views: int | None, dim: int, classes: int
) -> tuple[Tensor, Tensor]:
    """Float64 embeddings ``(B, D)`` or ``(B, V, D)`` and labels in ``[0, classes)``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, dim) if views is None else (batch, views, dim)
    embeddings = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return embeddings, labels


KERNEL_CASES = ["random_with_singletons", "duplicates", "multi_view", "labels_none"]
"""The prepared batches every kernel is checked on (see :func:`make_case`)."""


def make_case(
    name: str,
    dtype: torch.dtype,
    *,
    rows: int,
    dim: int,
    classes: int,
    seed: int,
    views: int = 2,
    singletons: int = 1,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Prepared rows ``(N, D)`` and int64 labels ``(N,)`` of one kernel case.

    - ``"random_with_singletons"``: random labels, the first ``singletons`` rows alone in
      their class (anchors without positives);
    - ``"duplicates"``: row 1 copied to rows 4 (same label) and 7 (another label);
    - ``"multi_view"``: ``rows // views`` samples of ``views`` rows, sample-major;
    - ``"labels_none"``: each sample its own class (SimCLR's labels).
    """
    gen = torch.Generator().manual_seed(seed)
    if name == "multi_view":
        labels = torch.randint(0, classes, (rows // views,), generator=gen)
        labels = labels.repeat_interleave(views)
    elif name == "labels_none":
        labels = torch.arange(rows // views).repeat_interleave(views)
    else:
        labels = torch.randint(0, classes, (rows,), generator=gen)
        if name == "random_with_singletons":
            labels[:singletons] = 100 + torch.arange(singletons)
    z = torch.randn(labels.shape[0], dim, generator=gen, dtype=torch.float64)
    if name == "duplicates":
        z[4], z[7] = z[1], z[1]
        labels[4], labels[7] = labels[1], labels[1] + 1
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    return z.to(dtype), labels
