"""Evaluate a classifier on a spec's shifted test distributions, group by group.

A model trained on a spec with a shortcut is judged on the distributions that spec derives
(:meth:`~nodulebench.NoduleSpec.test_distributions`: i.i.d., decorrelated, reversed, held
out, covariate shift): accuracy, balanced accuracy, AUC and calibration (ECE) from
:func:`~nodulebench.metrics.binary_metrics`, and the accuracy of each (label x shortcut
side) group (:meth:`~nodulebench.SyntheticNodules.group_ids`) with the worst of them.

Five lines evaluate one's own model:

.. code-block:: python

    from nodulebench import NoduleSpec
    from nodulebench.evaluation import evaluate

    spec = NoduleSpec().with_shortcut("diameter_mm", 0.9)  # the training spec
    for name, result in evaluate(model, spec, image_size=32).items():
        print(name, result.worst_group_accuracy, result.metrics.roc_auc)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from nodulebench._validation import check_choice, check_int
from nodulebench.data import NoduleSpec, SyntheticNodules
from nodulebench.metrics import BinaryMetrics, binary_metrics
from nodulebench.stats import group_accuracy

__all__ = ["GroupEvaluation", "evaluate", "evaluate_predictions", "predict_probabilities"]

log = logging.getLogger(__name__)

Predictor = nn.Module | Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GroupEvaluation:
    """A classifier's metrics on one test set, overall and per group.

    Attributes:
        metrics: accuracy, sensitivity, specificity, balanced accuracy, ROC AUC and ECE
            (``None`` where a class is absent).
        group_accuracy: ``{group name: accuracy}`` of every group present.
        group_counts: ``{group name: number of samples}`` of every group present.
        worst_group_accuracy: the lowest accuracy over the groups present.
        worst_group: the name of that group.
    """

    metrics: BinaryMetrics
    group_accuracy: dict[str, float]
    group_counts: dict[str, int]
    worst_group_accuracy: float
    worst_group: str

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON-friendly dictionary: the metrics' fields, then the group ones."""
        return {
            **self.metrics.to_dict(),
            "worst_group_accuracy": self.worst_group_accuracy,
            "worst_group": self.worst_group,
            "group_accuracy": dict(self.group_accuracy),
            "group_counts": dict(self.group_counts),
        }


def evaluate_predictions(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    group_names: Sequence[str] = SyntheticNodules.group_names,
    threshold: float = 0.5,
) -> GroupEvaluation:
    """Metrics and per-group accuracies of given predictions.

    Args:
        probabilities: ``(N,)`` predicted probability of class 1 (malignant), in [0, 1].
        labels: ``(N,)`` true labels in ``{0, 1}``.
        groups: ``(N,)`` group of each sample, an index into ``group_names`` (e.g.
            :meth:`~nodulebench.SyntheticNodules.group_ids`).
        group_names: the name of each group.
        threshold: a sample is predicted malignant when its probability is ``>=`` this.

    Returns:
        A :class:`GroupEvaluation`.

    Example:
        >>> r = evaluate_predictions(torch.tensor([0.9, 0.2, 0.7, 0.4]),
        ...                          torch.tensor([1, 0, 0, 1]), torch.tensor([2, 0, 1, 3]))
        >>> r.metrics.accuracy, r.worst_group_accuracy, r.worst_group
        (0.5, 0.0, 'benign-conflicting')
    """
    metrics = binary_metrics(probabilities, labels, threshold=threshold)
    predicted = (probabilities.detach().cpu() >= threshold).long()
    per_group = group_accuracy(predicted, labels.cpu(), groups.cpu(), list(group_names))
    return GroupEvaluation(
        metrics=metrics,
        group_accuracy=per_group.per_group,
        group_counts=per_group.counts,
        worst_group_accuracy=per_group.worst,
        worst_group=per_group.worst_group,
    )


def _module_device(model: Predictor) -> torch.device | None:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


@torch.no_grad()
def predict_probabilities(
    model: Predictor,
    images: torch.Tensor,
    *,
    output: Literal["logits", "probabilities"] = "logits",
    batch_size: int = 256,
) -> torch.Tensor:
    """``(N,)`` probability of class 1 that ``model`` gives each of ``images``.

    An :class:`~torch.nn.Module` runs in eval mode (its mode is restored after) on the
    device of its parameters; any other callable gets the images as they are.

    Args:
        model: maps images ``(b, 1, H, W)`` (or volumes) to ``(b, 2)`` class scores, or
            ``(b,)`` / ``(b, 1)`` scores of class 1.
        images: ``(N, 1, H, W)`` or ``(N, 1, D, H, W)``.
        output: what ``model`` returns: ``"logits"`` (softmax over two columns, sigmoid
            of one) or ``"probabilities"`` (column 1 of two, or the one column).
        batch_size: images per call of ``model``, ``>= 1``.

    Returns:
        ``(N,)`` float32 probabilities on the CPU.

    Raises:
        ValueError: an unknown ``output``, or ``model`` returns another shape.

    Example:
        >>> predict_probabilities(lambda x: x.flatten(1).mean(1, keepdim=True),
        ...                       torch.zeros(3, 1, 4, 4))
        tensor([0.5000, 0.5000, 0.5000])
    """
    check_choice("output", output, ("logits", "probabilities"))
    check_int("batch_size", batch_size, 1, None)
    device = _module_device(model)
    training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        chunks = []
        for batch in torch.split(images, batch_size):
            scores = model(batch if device is None else batch.to(device))
            if scores.ndim == 2 and scores.shape[1] == 2:
                p = scores.softmax(dim=1)[:, 1] if output == "logits" else scores[:, 1]
            elif scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
                p = scores.reshape(-1)
                p = p.sigmoid() if output == "logits" else p
            else:
                raise ValueError(
                    "model must return (b, 2) class scores or (b,) / (b, 1) scores of class 1; "
                    f"got shape {tuple(scores.shape)} for {len(batch)} images"
                )
            if p.shape[0] != len(batch):
                raise ValueError(
                    f"model must return one row per image; got {p.shape[0]} for {len(batch)}"
                )
            chunks.append(p.float().cpu())
    finally:
        if isinstance(model, nn.Module):
            model.train(training)
    return torch.cat(chunks)


def evaluate(
    model: Predictor,
    spec: NoduleSpec,
    *,
    n: int = 1000,
    seed: int = 1,
    image_size: int = 64,
    volume_size: int | None = None,
    distributions: Mapping[str, NoduleSpec] | None = None,
    factor: str | None = None,
    output: Literal["logits", "probabilities"] = "logits",
    batch_size: int = 256,
    threshold: float = 0.5,
) -> dict[str, GroupEvaluation]:
    """Evaluate ``model`` on every test distribution of the training spec ``spec``.

    Each distribution is rendered as a :class:`~nodulebench.SyntheticNodules` of ``n``
    samples (seed ``seed``; use another seed than the training set's) and scored with
    :func:`evaluate_predictions`; groups are label x side of the shortcut ``factor``.
    Progress goes to the ``"nodulebench"`` logger at INFO level.

    Args:
        model: an image classifier (see :func:`predict_probabilities`).
        spec: the training spec, with at least one shortcut.
        n: samples per test distribution, ``>= 1``.
        seed: the test sets' seed.
        image_size: rendered image size in pixels (as in training).
        volume_size: render volumes of this size instead (3-D models).
        distributions: ``{name: spec}`` to evaluate on (default:
            ``spec.test_distributions()``).
        factor: the shortcut whose side defines the groups (default: the first).
        output: what ``model`` returns (see :func:`predict_probabilities`).
        batch_size: images rendered and scored at a time.
        threshold: probability from which a sample is predicted malignant.

    Returns:
        ``{distribution name: GroupEvaluation}``, in the order of ``distributions``.

    Raises:
        ValueError: ``spec`` has no shortcut, ``factor`` is not one of its shortcuts, or
            an argument is out of range.

    Example:
        >>> spec = NoduleSpec().with_shortcut("diameter_mm", 0.9)
        >>> def by_size(images):  # bright area ~ nodule size: the shortcut itself
        ...     return (images > 0.6).float().mean(dim=(1, 2, 3)) * 40 - 2
        >>> results = evaluate(by_size, spec, n=200, image_size=32)
        >>> list(results)
        ['iid', 'decorrelated', 'reversed', 'heldout', 'covariate']
        >>> results["iid"].worst_group_accuracy < results["iid"].metrics.accuracy
        True
    """
    if not isinstance(spec, NoduleSpec):
        raise TypeError(f"spec must be a NoduleSpec; got {type(spec).__name__}")
    if not spec.shortcuts:
        raise ValueError(
            "spec must have a shortcut (groups are label x shortcut side); got none "
            f"({spec.describe()}); add one with spec.with_shortcut(factor, strength)"
        )
    check_int("n", n, 1, None)
    check_int("batch_size", batch_size, 1, None)
    chosen = spec.test_distributions() if distributions is None else dict(distributions)
    results = {}
    for name, test_spec in chosen.items():
        start = time.perf_counter()
        dataset = SyntheticNodules(
            test_spec, n=n, seed=seed, image_size=image_size, volume_size=volume_size
        )
        probabilities = torch.cat(
            [
                predict_probabilities(
                    model, dataset.render(range(lo, min(lo + batch_size, n))), output=output
                )
                for lo in range(0, n, batch_size)
            ]
        )
        results[name] = evaluate_predictions(
            probabilities,
            dataset.labels,
            dataset.group_ids(factor),
            threshold=threshold,
        )
        log.info(
            "evaluated %s (%d samples) in %.1f s: accuracy %.3f, worst-group %.3f",
            name,
            n,
            time.perf_counter() - start,
            results[name].metrics.accuracy,
            results[name].worst_group_accuracy,
        )
    return results
