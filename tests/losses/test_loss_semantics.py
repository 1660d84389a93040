"""Semantics users trip on: identities, excluded anchors, dtypes, non-finite input, bad input."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from nodulebench import (
    ContrastiveLoss,
    CrossEntropyLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
)
from nodulebench.losses import functional as LF
from nodulebench.losses.distances import (
    cosine_distance,
    euclidean_distance,
    pairwise_distance,
    squared_euclidean_distance,
)

LossFn = Callable[..., torch.Tensor]
PAIRWISE_FNS: list[LossFn] = [
    LF.supcon_loss,
    LF.contrastive_loss,
    LF.triplet_margin_loss,
    LF.multi_similarity_loss,
]


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ntxent_equals_supcon_without_labels_and_with_own_classes(
    views: int, reduction: str
) -> None:
    embeddings = randn(6, views, 5, dtype=torch.float64)
    ntxent = LF.ntxent_loss(embeddings, temperature=0.3, reduction=reduction)
    unlabeled = LF.supcon_loss(embeddings, None, temperature=0.3, reduction=reduction)
    own_class = LF.supcon_loss(
        embeddings, torch.arange(6) * 3 + 1, temperature=0.3, reduction=reduction
    )
    torch.testing.assert_close(ntxent, unlabeled)
    torch.testing.assert_close(ntxent, own_class)
    if views == 2:
        two_views = LF.ntxent_loss(
            embeddings[:, 0], embeddings[:, 1], temperature=0.3, reduction=reduction
        )
        torch.testing.assert_close(two_views, ntxent)


def test_ntxent_module_accepts_both_forms() -> None:
    a, b = randn(4, 8, seed=1), randn(4, 8, seed=2)
    loss_fn = NTXentLoss(temperature=0.5)
    torch.testing.assert_close(loss_fn(a, b), loss_fn(torch.stack((a, b), dim=1)))


@pytest.mark.parametrize("variant", ["out", "in"])
def test_base_temperature_scales_by_temperature_ratio(variant: str) -> None:
    embeddings, labels = randn(6, 2, 4), torch.tensor([0, 1, 0, 1, 2, 2])
    plain = LF.supcon_loss(embeddings, labels, temperature=0.2, variant=variant, reduction="none")
    scaled = LF.supcon_loss(
        embeddings,
        labels,
        temperature=0.2,
        variant=variant,
        base_temperature=0.07,
        reduction="none",
    )
    torch.testing.assert_close(scaled, plain * (0.2 / 0.07))


def test_supcon_in_is_at_most_out() -> None:
    # Jensen: log of a mean >= mean of logs, so L_in <= L_out anchor by anchor.
    embeddings, labels = randn(8, 2, 4, seed=3), torch.tensor([0, 0, 1, 1, 0, 2, 2, 1])
    out = LF.supcon_loss(embeddings, labels, variant="out", reduction="none")
    inside = LF.supcon_loss(embeddings, labels, variant="in", reduction="none")
    assert bool((inside <= out + 1e-6).all())


def test_supcon_single_positive_variants_agree() -> None:
    embeddings = randn(5, 2, 4, seed=4)
    torch.testing.assert_close(
        LF.supcon_loss(embeddings, variant="in"), LF.supcon_loss(embeddings, variant="out")
    )


# ----------------------------------------------------------------------------- excluded anchors


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (SupConLoss, {}),
        (SupConLoss, {"variant": "in"}),
        (TripletMarginLoss, {}),
        (TripletMarginLoss, {"mining": "all"}),
        (TripletMarginLoss, {"mining": "semihard"}),
        (MultiSimilarityLoss, {}),
    ],
    ids=str,
)
def test_anchors_without_positive_are_excluded_and_counted(
    factory: type[torch.nn.Module], kwargs: dict[str, object]
) -> None:
    embeddings = randn(5, 6, dtype=torch.float64)
    labels = torch.tensor([1, 1, 7, 9, 1])  # labels 7 and 9 have no positive
    excluded, kept = [2, 3], [0, 1, 4]
    module = factory(**kwargs)
    loss = module(embeddings, labels)
    assert module.num_excluded_anchors == len(excluded)
    per_anchor = factory(reduction="none", **kwargs)(embeddings, labels)
    assert per_anchor.shape == (5,)
    assert bool((per_anchor[excluded] == 0).all())
    assert bool((per_anchor[kept] >= 0).all())
    if kwargs.get("mining") != "all":  # "all" averages over triplets, tested below
        torch.testing.assert_close(loss, per_anchor[kept].mean())
        torch.testing.assert_close(
            factory(reduction="sum", **kwargs)(embeddings, labels), per_anchor.sum()
        )


def test_triplet_anchor_without_negative_is_excluded() -> None:
    loss_fn = TripletMarginLoss(reduction="none")
    per_anchor = loss_fn(randn(4, 3), torch.tensor([0, 0, 0, 0]))
    assert loss_fn.num_excluded_anchors == 4
    assert bool((per_anchor == 0).all())


def test_contrastive_single_row_is_excluded() -> None:
    loss_fn = ContrastiveLoss()
    loss = loss_fn(randn(1, 3, seed=2), torch.tensor([0]))
    assert loss_fn.num_excluded_anchors == 1
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (SupConLoss, {}),
        (SupConLoss, {"variant": "in"}),
        (TripletMarginLoss, {}),
        (TripletMarginLoss, {"mining": "all"}),
        (TripletMarginLoss, {"mining": "semihard"}),
        (MultiSimilarityLoss, {}),
    ],
    ids=str,
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batch_without_valid_anchor_gives_connected_zero(
    factory: type[torch.nn.Module], kwargs: dict[str, object], reduction: str
) -> None:
    module = factory(reduction=reduction, **kwargs)
    embeddings = randn(4, 2, 3).requires_grad_(True)
    loss = module(embeddings[:, :1], torch.tensor([0, 1, 2, 3]))  # one view, all distinct
    assert module.num_excluded_anchors == 4
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert embeddings.grad is not None
    assert bool((embeddings.grad == 0).all())


@pytest.mark.parametrize(
    "factory", [SupConLoss, TripletMarginLoss, MultiSimilarityLoss], ids=lambda f: f.__name__
)
def test_float16_batch_without_valid_anchor_gives_zero_not_nan(
    factory: type[torch.nn.Module],
) -> None:
    # The entries sum to 3.6e5, beyond float16's range (65504): the zero must not be
    # computed from that sum.
    embeddings = torch.full((4, 3), 3.0e4, dtype=torch.float16, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    loss = factory()(embeddings, labels)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert embeddings.grad is not None and bool((embeddings.grad == 0).all())
    with_nan = embeddings.detach().clone()
    with_nan[2, 1] = math.nan
    assert torch.isnan(factory()(with_nan, labels))


def test_triplet_all_with_no_positive_triplet_gives_connected_zero() -> None:
    # Two tight, far apart clusters: every triplet satisfies the margin.
    embeddings = torch.tensor(
        [[0.0, 1.0], [0.0, 1.01], [1.0, 0.0], [1.01, 0.0]], requires_grad=True
    )
    loss_fn = TripletMarginLoss(mining="all")
    loss = loss_fn(embeddings, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and loss_fn.num_excluded_anchors == 0
    loss.backward()
    assert embeddings.grad is not None and bool((embeddings.grad == 0).all())


def test_triplet_all_mean_is_global_over_positive_triplets() -> None:
    embeddings, labels = randn(6, 3, seed=8), torch.tensor([0, 0, 1, 1, 2, 0])
    total = LF.triplet_margin_loss(embeddings, labels, mining="all", margin=1.0, reduction="sum")
    mean = LF.triplet_margin_loss(embeddings, labels, mining="all", margin=1.0)
    d = torch.cdist(
        torch.nn.functional.normalize(embeddings), torch.nn.functional.normalize(embeddings)
    )
    count = sum(
        1
        for i in range(6)
        for p in range(6)
        for n in range(6)
        if p != i
        and labels[p] == labels[i]
        and labels[n] != labels[i]
        and d[i, p] - d[i, n] + 1.0 > 0
    )
    torch.testing.assert_close(mean, total / count)


def test_reduction_none_keeps_leading_shape() -> None:
    labels = torch.tensor([0, 1, 0])
    for fn in PAIRWISE_FNS:
        assert fn(randn(3, 4), labels, reduction="none").shape == (3,)
        assert fn(randn(3, 2, 4), labels, reduction="none").shape == (3, 2)
    assert LF.ntxent_loss(randn(3, 4), randn(3, 4, seed=1), reduction="none").shape == (3, 2)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", PAIRWISE_FNS + [LF.cross_entropy_loss], ids=lambda f: f.__name__)
def test_low_precision_inputs_compute_and_return_float32(low: torch.dtype, fn: LossFn) -> None:
    if fn is LF.cross_entropy_loss:
        inputs, labels = randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    else:
        inputs, labels = randn(6, 2, 4), torch.tensor([0, 1, 0, 1, 2, 2])
    rounded = inputs.to(low)
    leaf = rounded.clone().requires_grad_(True)
    got = fn(leaf, labels)
    assert got.dtype == torch.float32
    # Same numbers as float32 maths on the rounded inputs: upcast first, no fp16 accumulation.
    torch.testing.assert_close(got, fn(rounded.float(), labels), rtol=1e-6, atol=1e-6)
    got.backward()
    assert leaf.grad is not None and leaf.grad.dtype == low


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_follows_input(dtype: torch.dtype) -> None:
    labels = torch.tensor([0, 1, 0, 1])
    for fn in PAIRWISE_FNS:
        assert fn(randn(4, 3, dtype=dtype), labels).dtype == dtype


def test_runs_on_requested_device_and_dtype(device: torch.device, dtype: torch.dtype) -> None:
    embeddings = randn(6, 2, 4).to(device=device, dtype=dtype)
    labels = torch.tensor([0, 1, 0, 1, 2, 2], device=device)
    for fn in PAIRWISE_FNS:
        loss = fn(embeddings, labels)
        assert loss.device.type == device.type and torch.isfinite(loss)


# ----------------------------------------------------------------------------- non-finite input


@pytest.mark.parametrize("fn", PAIRWISE_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("normalize", [False, True])
def test_non_finite_embeddings_give_non_finite_loss(
    fn: LossFn, bad: float, normalize: bool
) -> None:
    # Documented: not checked (no device sync); a NaN/inf entry makes the loss NaN (or inf),
    # never a finite number computed without that row.
    embeddings = randn(4, 3)
    embeddings[1, 0] = bad
    loss = fn(embeddings, torch.tensor([0, 0, 1, 1]), normalize=normalize)
    assert not torch.isfinite(loss)
    if bad != bad:
        assert torch.isnan(loss)


# ----------------------------------------------------------------------------- distances


def test_distances_against_cdist_and_coincidence() -> None:
    z = randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(euclidean_distance(z), torch.cdist(z, z).clamp(min=1e-6))
    torch.testing.assert_close(squared_euclidean_distance(z), torch.cdist(z, z).square())
    unit = torch.nn.functional.normalize(z)
    torch.testing.assert_close(cosine_distance(z), 1 - unit @ unit.T)
    same = torch.ones(2, 3, requires_grad=True)
    d = pairwise_distance(same, "euclidean")
    assert torch.allclose(d, torch.full((2, 2), 1e-6))
    d.sum().backward()
    assert same.grad is not None and torch.isfinite(same.grad).all()


# ----------------------------------------------------------------------------- bad input


def message(*parts: str) -> str:
    return ".*".join(re.escape(p) for p in parts)


LABELS = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("fn", PAIRWISE_FNS, ids=lambda f: f.__name__)
def test_bad_embeddings_and_labels(fn: LossFn) -> None:
    with pytest.raises(ValueError, match=message("embeddings", "(B, D) or (B, V, D)", "(4,)")):
        fn(torch.randn(4), LABELS)
    with pytest.raises(ValueError, match=message("embeddings", "(1, 4, 2, 3)")):
        fn(torch.randn(1, 4, 2, 3), LABELS)
    with pytest.raises(TypeError, match=message("embeddings", "floating", "torch.int64")):
        fn(torch.ones(4, 3, dtype=torch.int64), LABELS)
    with pytest.raises(ValueError, match=message("embeddings", "at least one", "(0, 3)")):
        fn(torch.randn(0, 3), LABELS[:0])
    with pytest.raises(ValueError, match=message("embeddings", "at least one", "(4, 0, 3)")):
        fn(torch.randn(4, 0, 3), LABELS)
    with pytest.raises(TypeError, match=message("embeddings", "torch.Tensor", "list")):
        fn([[1.0, 2.0]], LABELS)
    with pytest.raises(ValueError, match=message("labels", "(B,) = (4,)", "(3,)")):
        fn(torch.randn(4, 3), LABELS[:3])
    with pytest.raises(ValueError, match=message("labels", "(B,)", "(4, 1)")):
        fn(torch.randn(4, 3), LABELS[:, None])
    with pytest.raises(TypeError, match=message("labels", "integer", "torch.float32")):
        fn(torch.randn(4, 3), LABELS.float())
    with pytest.raises(TypeError, match=message("labels", "integer", "torch.bool")):
        fn(torch.randn(4, 3), LABELS.bool())
    with pytest.raises(ValueError, match=message("reduction", "'mean'", "'avg'")):
        fn(torch.randn(4, 3), LABELS, reduction="avg")
    with pytest.raises(TypeError, match=message("normalize", "bool", "int")):
        fn(torch.randn(4, 3), LABELS, normalize=1)


@pytest.mark.parametrize(
    "fn",
    [LF.contrastive_loss, LF.triplet_margin_loss, LF.multi_similarity_loss],
    ids=lambda f: f.__name__,
)
def test_labels_required(fn: LossFn) -> None:
    with pytest.raises(TypeError, match=message("labels", "(B,) integer", "None")):
        fn(torch.randn(4, 3), None)


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "parts"),
    [
        (SupConLoss, {"temperature": 0.0}, ValueError, ("temperature", "> 0", "0.0")),
        (SupConLoss, {"temperature": -1.0}, ValueError, ("temperature", "> 0", "-1.0")),
        (SupConLoss, {"temperature": math.nan}, ValueError, ("temperature", "> 0", "nan")),
        (SupConLoss, {"temperature": "0.1"}, TypeError, ("temperature", "real number", "str")),
        (SupConLoss, {"variant": "both"}, ValueError, ("variant", "'out', 'in'", "'both'")),
        (SupConLoss, {"base_temperature": 0.0}, ValueError, ("base_temperature", "> 0", "0.0")),
        (SupConLoss, {"reduction": "avg"}, ValueError, ("reduction", "'mean'", "'avg'")),
        (NTXentLoss, {"temperature": -0.5}, ValueError, ("temperature", "> 0", "-0.5")),
        (ContrastiveLoss, {"margin": -1.0}, ValueError, ("margin", ">= 0", "-1.0")),
        (TripletMarginLoss, {"margin": -0.2}, ValueError, ("margin", ">= 0", "-0.2")),
        (TripletMarginLoss, {"mining": "easy"}, ValueError, ("mining", "'all'", "'easy'")),
        (TripletMarginLoss, {"distance": "l1"}, ValueError, ("distance", "'euclidean'", "'l1'")),
        (MultiSimilarityLoss, {"alpha": 0.0}, ValueError, ("alpha", "> 0", "0.0")),
        (MultiSimilarityLoss, {"beta": -50.0}, ValueError, ("beta", "> 0", "-50.0")),
        (MultiSimilarityLoss, {"base": 2.0}, ValueError, ("base", "[-1.0, 1.0]", "2.0")),
        (MultiSimilarityLoss, {"epsilon": -0.1}, ValueError, ("epsilon", ">= 0", "-0.1")),
        (
            CrossEntropyLoss,
            {"label_smoothing": 1.5},
            ValueError,
            ("label_smoothing", "[0.0, 1.0]", "1.5"),
        ),
        (CrossEntropyLoss, {"weight": torch.ones(2, 2)}, ValueError, ("weight", "(C,)", "(2, 2)")),
        (
            CrossEntropyLoss,
            {"weight": torch.ones(3, dtype=torch.int64)},
            TypeError,
            ("weight", "floating", "torch.int64"),
        ),
        (CrossEntropyLoss, {"reduction": "batchmean"}, ValueError, ("reduction", "'batchmean'")),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else None,
)
def test_bad_options_fail_at_construction_and_call(
    factory: type, kwargs: dict[str, object], error: type[Exception], parts: tuple[str, ...]
) -> None:
    with pytest.raises(error, match=message(*parts)):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("fn", "kwargs", "parts"),
    [
        (LF.supcon_loss, {"temperature": 0.0}, ("temperature", "> 0", "0.0")),
        (LF.ntxent_loss, {"temperature": 0.0}, ("temperature", "> 0", "0.0")),
        (LF.contrastive_loss, {"margin": -1.0}, ("margin", ">= 0", "-1.0")),
        (LF.triplet_margin_loss, {"mining": "easy"}, ("mining", "'easy'")),
        (LF.triplet_margin_loss, {"distance": "l1"}, ("distance", "'l1'")),
        (LF.multi_similarity_loss, {"epsilon": -1.0}, ("epsilon", ">= 0", "-1.0")),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_functional_validates_options(
    fn: LossFn, kwargs: dict[str, object], parts: tuple[str, ...]
) -> None:
    embeddings = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=message(*parts)):
        if fn is LF.ntxent_loss:
            fn(embeddings, **kwargs)
        else:
            fn(embeddings, LABELS, **kwargs)


def test_ntxent_bad_views() -> None:
    with pytest.raises(ValueError, match=message("(B, V, D) with V >= 2", "(4, 3)")):
        LF.ntxent_loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match=message("(B, V, D) with V >= 2", "(4, 1, 3)")):
        LF.ntxent_loss(torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match=message("view2", "(4, 3)", "(5, 3)")):
        LF.ntxent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=message("view1", "(B, D)", "(4, 2, 3)")):
        LF.ntxent_loss(torch.randn(4, 2, 3), torch.randn(4, 3))


def test_cross_entropy_bad_inputs() -> None:
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=message("logits", "(B, C)", "(4,)")):
        LF.cross_entropy_loss(torch.randn(4), targets)
    with pytest.raises(TypeError, match=message("logits", "floating", "torch.int64")):
        LF.cross_entropy_loss(logits.long(), targets)
    with pytest.raises(ValueError, match=message("targets", "(B,) = (4,)", "(3,)")):
        LF.cross_entropy_loss(logits, targets[:3])
    with pytest.raises(TypeError, match=message("targets", "integer", "torch.float32")):
        LF.cross_entropy_loss(logits, targets.float())
    with pytest.raises(ValueError, match=message("targets", "[0, 3)", "[0, 3]")):
        LF.cross_entropy_loss(logits, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=message("weight", "(C,) = (3,)", "(2,)")):
        LF.cross_entropy_loss(logits, targets, weight=torch.ones(2))
