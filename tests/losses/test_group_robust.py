"""GroupDRO and Correct-N-Contrast against independent step-by-step definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodulebench import CnCLoss, GroupDROLoss, create_loss
from nodulebench.losses.group_robust import cnc_loss, group_dro_loss

# --------------------------------------------------------------------------- GroupDRO


def paper_group_dro(
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_groups: int,
    step_size: float,
    adjustment: float = 0.0,
    sizes: list[float] | None = None,
) -> tuple[list[list[float]], list[float]]:
    """Sagawa et al.'s Algorithm 1 on mini-batches, one group and one sample at a time.

    Returns the weights q after each step and each step's objective sum_g q_g L_g.
    """
    q = [1.0 / num_groups] * num_groups
    trajectory, objectives = [], []
    for logits, labels, groups in batches:
        losses = [0.0] * num_groups
        counts = [0] * num_groups
        for b in range(logits.shape[0]):
            row = logits[b].tolist()
            log_norm = math.log(sum(math.exp(v) for v in row))
            g = int(groups[b])
            losses[g] += log_norm - row[int(labels[b])]
            counts[g] += 1
        means = [losses[g] / counts[g] if counts[g] else 0.0 for g in range(num_groups)]
        for g in range(num_groups):
            if counts[g]:  # an absent group gets no step
                extra = adjustment / math.sqrt(sizes[g]) if sizes else 0.0
                q[g] *= math.exp(step_size * (means[g] + extra))
        total = sum(q)
        q = [v / total for v in q]
        trajectory.append(list(q))
        objectives.append(sum(q[g] * means[g] for g in range(num_groups)))
    return trajectory, objectives


def dro_batches(
    steps: int, batch: int, num_groups: int, seed: int = 0, absent: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        logits = 2.0 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, 3, (batch,), generator=gen)
        groups = torch.randint(0, num_groups, (batch,), generator=gen)
        if absent is not None:
            groups = torch.where(groups == absent, (absent + 1) % num_groups, groups)
        out.append((logits, labels, groups))
    return out


@pytest.mark.parametrize(("adjustment", "absent"), [(0.0, None), (2.0, None), (1.0, 2)])
def test_weights_and_objective_follow_the_paper_step_by_step(
    adjustment: float, absent: int | None
) -> None:
    sizes = [50.0, 10.0, 200.0, 5.0]
    batches = dro_batches(6, 10, 4, seed=3, absent=absent)
    want_q, want_loss = paper_group_dro(
        batches, 4, step_size=0.3, adjustment=adjustment, sizes=sizes
    )
    loss_fn = GroupDROLoss(
        num_groups=4, step_size=0.3, adjustment=adjustment, group_counts=torch.tensor(sizes)
    )
    for (logits, labels, groups), q, objective in zip(batches, want_q, want_loss, strict=True):
        loss = loss_fn(logits, labels, groups)
        torch.testing.assert_close(
            loss_fn.group_weights, torch.tensor(q, dtype=torch.float64), rtol=1e-12, atol=1e-14
        )
        assert loss.item() == pytest.approx(objective, rel=1e-12)
    if absent is not None:  # only the renormalisation moved it: below uniform, never NaN
        assert 0.0 < loss_fn.group_weights[absent].item() < 0.25


def test_gradient_is_the_weighted_group_means_with_the_updated_weights() -> None:
    batches = dro_batches(3, 12, 4, seed=5)
    model = torch.nn.Linear(3, 3, dtype=torch.float64)
    loss_fn = GroupDROLoss(num_groups=4, step_size=0.5)
    for features, labels, groups in batches:
        model.zero_grad()
        loss_fn(model(features), labels, groups).backward()
        got = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
        # Independent: q from the module (checked above), group means by a loop.
        q = loss_fn.group_weights
        objective = torch.zeros((), dtype=torch.float64)
        logits = model(features)
        for g in range(4):
            members = [b for b in range(len(groups)) if int(groups[b]) == g]
            if members:
                terms = [torch.logsumexp(logits[b], 0) - logits[b, labels[b]] for b in members]
                objective = objective + q[g] * torch.stack(terms).mean()
        want = torch.autograd.grad(objective, list(model.parameters()))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gradcheck_without_update() -> None:
    logits, labels, groups = dro_batches(1, 7, 3, seed=1)[0]
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return group_dro_loss(x, labels, groups, weights, num_groups=3, update=False).loss

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(True),))


def test_eval_mode_keeps_the_weights_and_state_dict_round_trips() -> None:
    logits, labels, groups = dro_batches(1, 8, 4, seed=2)[0]
    loss_fn = GroupDROLoss(step_size=1.0)
    loss_fn(logits, labels, groups)
    trained = loss_fn.group_weights.clone()
    assert not torch.allclose(trained, torch.full((4,), 0.25, dtype=torch.float64))
    loss_fn.eval()
    evaluated = loss_fn(logits, labels, groups)
    torch.testing.assert_close(loss_fn.group_weights, trained, rtol=0, atol=0)
    fresh = GroupDROLoss(step_size=1.0)
    fresh.load_state_dict(loss_fn.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(logits, labels, groups), evaluated, rtol=0, atol=0)
    assert "group_weights" in loss_fn.state_dict()


def test_reduction_none_sums_to_the_objective() -> None:
    logits, labels, groups = dro_batches(1, 9, 4, seed=4)[0]
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    mean = group_dro_loss(logits, labels, groups, weights, step_size=0.2)
    none = group_dro_loss(logits, labels, groups, weights, step_size=0.2, reduction="none")
    assert none.loss.shape == (9,)
    torch.testing.assert_close(none.loss.sum(), mean.loss)
    torch.testing.assert_close(none.group_weights, mean.group_weights)


def test_a_batch_of_one_group_gives_finite_weights_and_loss() -> None:
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss_fn = GroupDROLoss(num_groups=4, step_size=0.1)
    for _ in range(50):
        loss = loss_fn(logits, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert torch.isfinite(loss) and torch.isfinite(loss_fn.group_weights).all()
    others = loss_fn.group_weights[[0, 2, 3]]
    torch.testing.assert_close(others, others[0].expand(3))  # untouched but renormalised
    assert loss_fn.group_weights[1] > 0.25


def test_group_dro_bad_inputs_are_named() -> None:
    loss_fn = GroupDROLoss(num_groups=4)
    logits, labels = torch.zeros(3, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"groups must lie in \[0, 4\).*\[0, 4\]"):
        loss_fn(logits, labels, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"groups must lie in \[0, 4\).*\[-1, 1\]"):
        loss_fn(logits, labels, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="groups must be on the device of logits"):
        loss_fn(logits, labels, torch.tensor([0, 1, 1], device="meta"))
    with pytest.raises(ValueError, match=r"groups must have shape \(B,\) = \(3,\)"):
        loss_fn(logits, labels, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="groups must have an integer dtype"):
        loss_fn(logits, labels, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits must .*\(B, C\)"):
        loss_fn(torch.zeros(3), labels, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        loss_fn(logits, torch.tensor([0, 2, 0]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"group_weights must have shape \(G,\) = \(4,\)"):
        group_dro_loss(logits, labels, torch.tensor([0, 1, 1]), torch.ones(3) / 3)


def test_group_dro_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="num_groups must be an int >= 1"):
        GroupDROLoss(num_groups=0)
    with pytest.raises(ValueError, match="step_size"):
        GroupDROLoss(step_size=-0.1)
    with pytest.raises(ValueError, match="group_counts must be given when adjustment > 0"):
        GroupDROLoss(adjustment=1.0)
    with pytest.raises(ValueError, match=r"group_counts must have shape \(G,\) = \(4,\)"):
        GroupDROLoss(group_counts=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="group_counts must be > 0"):
        GroupDROLoss(group_counts=torch.tensor([1.0, 0.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="reduction"):
        GroupDROLoss(reduction="sum")
    with pytest.raises(TypeError, match="unknown keyword argument"):
        create_loss("group_dro", stepsize=0.1)
    assert (
        repr(create_loss("group_dro", step_size=0.05))
        == "GroupDROLoss(step_size=0.05, reduction='mean')"
    )


# --------------------------------------------------------------------------- CnC


def dense_cnc(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    temperature: float,
    variant: str = "out",
) -> torch.Tensor:
    """The definition, anchor by anchor: SupCon over CnC's positives and negatives."""
    views = embeddings.shape[1] if embeddings.ndim == 3 else 1
    z = torch.nn.functional.normalize(embeddings.reshape(-1, embeddings.shape[-1]), dim=1)
    y = labels.repeat_interleave(views).tolist()
    k = predictions.repeat_interleave(views).tolist()
    losses = []
    for i in range(z.shape[0]):
        positives = [j for j in range(z.shape[0]) if y[j] == y[i] and k[j] != k[i]]
        negatives = [j for j in range(z.shape[0]) if k[j] == k[i] and y[j] != y[i]]
        if not positives:
            continue
        s = {j: z[i] @ z[j] / temperature for j in positives + negatives}
        log_denominator = torch.logsumexp(torch.stack([s[j] for j in positives + negatives]), 0)
        if variant == "out":
            losses.append(torch.stack([log_denominator - s[p] for p in positives]).mean())
        else:
            log_mean = torch.logsumexp(torch.stack([s[p] for p in positives]), 0) - math.log(
                len(positives)
            )
            losses.append(log_denominator - log_mean)
    return torch.stack(losses).mean()


def cnc_case(
    seed: int, batch: int = 9, views: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, views, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    # A first model that is right on ~2/3 of the samples.
    flips = torch.rand(batch, generator=gen) < 0.35
    return embeddings, labels, torch.where(flips, 1 - labels, labels)


@pytest.mark.parametrize("backend", ["reference", "tiled"])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_cnc_values_and_gradients_equal_the_dense_definition(backend: str, variant: str) -> None:
    for seed in range(3):
        embeddings, labels, predictions = cnc_case(seed)
        leaf = embeddings.clone().requires_grad_(True)
        got = cnc_loss(leaf, labels, predictions, temperature=0.3, variant=variant, backend=backend)
        (grad,) = torch.autograd.grad(got, leaf)
        check = embeddings.clone().requires_grad_(True)
        want = dense_cnc(check, labels, predictions, 0.3, variant)
        (want_grad,) = torch.autograd.grad(want, check)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_cnc_tiled_in_small_tiles_and_gradcheck() -> None:
    from nodulebench.kernels import cnc_tiled
    from nodulebench.kernels._dense import pack_pair_labels

    embeddings, labels, predictions = cnc_case(7, batch=11, views=1)
    z = torch.nn.functional.normalize(embeddings[:, 0], dim=1).requires_grad_(True)
    codes = pack_pair_labels(labels, predictions)

    def fn(rows: torch.Tensor) -> torch.Tensor:
        return cnc_tiled(rows, codes, temperature=0.5, block_size=3)[0]

    assert torch.autograd.gradcheck(fn, (z,))
    want = cnc_loss(
        z.detach(),
        labels,
        predictions,
        temperature=0.5,
        normalize=False,
        reduction="none",
        backend="reference",
    )
    torch.testing.assert_close(fn(z.detach()), want)


def test_cnc_module_records_anchors_without_a_positive() -> None:
    embeddings, labels, _ = cnc_case(2)
    loss_fn = CnCLoss(temperature=0.2)
    # The first model is always right: no anchor has a positive; a connected zero.
    leaf = embeddings.clone().requires_grad_(True)
    loss = loss_fn(leaf, labels, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    assert loss_fn.num_excluded_anchors == leaf.shape[0] * leaf.shape[1]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(-3, 3))
def test_cnc_is_invariant_to_permutations_and_relabelled_predictions(seed: int, shift: int) -> None:
    embeddings, labels, predictions = cnc_case(seed, batch=8)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    base = cnc_loss(embeddings, labels, predictions)
    moved = cnc_loss(embeddings[order], labels[order], 7 * predictions[order] + shift)
    torch.testing.assert_close(base, moved)


def test_cnc_bad_inputs_are_named() -> None:
    embeddings, labels, predictions = cnc_case(0)
    with pytest.raises(ValueError, match=r"predictions must have shape \(B,\) = \(9,\)"):
        cnc_loss(embeddings, labels, predictions[:-1])
    with pytest.raises(TypeError, match="predictions must have an integer dtype"):
        cnc_loss(embeddings, labels, predictions.double())
    with pytest.raises(ValueError, match="predictions must be on the device of embeddings"):
        cnc_loss(embeddings, labels, predictions.to("meta"))
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)"):
        CnCLoss()(embeddings, labels[:3], predictions)
    with pytest.raises(ValueError, match="temperature"):
        CnCLoss(temperature=0.0)
    with pytest.raises(ValueError, match="backend='triton' cannot compute 'cnc'"):
        cnc_loss(embeddings, labels, predictions, backend="triton")


def test_cnc_compiles_without_graph_breaks() -> None:
    embeddings, labels, predictions = cnc_case(1)
    for backend in ("reference", "tiled"):
        torch._dynamo.reset()
        loss_fn = CnCLoss(backend=backend)
        explanation = torch._dynamo.explain(loss_fn)(embeddings, labels, predictions)
        assert explanation.graph_break_count == 0, explanation.break_reasons
