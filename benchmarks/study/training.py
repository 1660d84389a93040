"""Training protocols of the study (see :class:`~study.config.StudyLoss`).

* ``end_to_end`` (``cross_entropy`` on one view, ``cross_entropy_2view`` on two): encoder +
  linear classifier trained with cross-entropy.
* ``two_stage`` (``supcon``, ``contrastive``, ``triplet``, ``multi_similarity``, ``ntxent``):
  the SupCon protocol — stage 1 trains encoder + projection head with the loss on two views
  per image; stage 2 fits a linear classifier by cross-entropy on the frozen encoder's
  features. ``ntxent`` ignores the labels in stage 1 (self-supervised).
* ``joint`` (``supcon_ce``): encoder, projection head and classifier trained together with
  SupCon + ``ce_weight`` x cross-entropy; the classifier is used as is.
* ``group_dro`` (``group_dro``, ``group_dro_inferred``): encoder + classifier trained by
  GroupDRO on per-sample group ids (the generator's, or inferred from an identification
  model's errors).
* ``jtt`` (Liu et al. 2021): a first cross-entropy model trained for
  ``identification_epochs`` (:func:`identify`); a second, fresh model trained by
  cross-entropy with that model's training-set errors weighted ``jtt_upweight`` times
  (a weighted loss, the expectation of the paper's upsampling).
* ``cnc`` (Zhang et al. 2022): encoder, projection head and classifier trained together
  with Correct-N-Contrast on the identification model's predictions + ``ce_weight`` x
  cross-entropy.

After training, :func:`fit_heads` adds two more linear heads on the frozen encoder, so every
loss is also read under the two-stage protocol and with last-layer retraining on a small
group-balanced set (DFR, Kirichenko et al. 2022). A new protocol (e.g. JTT's two rounds)
is a new ``protocol`` value of :class:`~study.config.StudyLoss` handled in :func:`train`; a
loss on logits and group ids (GroupDRO) needs the training groups, which the experiment's
data already holds (``ExperimentData.train.groups``) for :func:`train` to pass on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nodulebench import create_loss
from nodulebench.distributed import sum_over_ranks
from nodulebench.losses.functional import cross_entropy_loss

from .augment import dihedral_views, rescan_views
from .config import STUDY_LOSSES, StudyConfig
from .models import StudyModel
from .parallel import Parallel

if TYPE_CHECKING:
    from .runner import LabelledImages


#: The model-selection regimes, each choosing one epoch on the validation split (never on a
#: test set), as Sagawa et al. (2020) and SpuCo report them side by side:
#: ``accuracy`` needs no group labels (best validation accuracy); ``worst_group`` reads the
#: validation set's group labels (best validation worst-group accuracy). Ties go to the
#: earlier epoch.
SELECTION_REGIMES = {
    "accuracy": "best validation accuracy (no group labels)",
    "worst_group": "best validation worst-group accuracy (with group labels)",
}


@dataclass
class Selected:
    """The epoch one selection regime chose, its validation scores and model state."""

    epoch: int
    scores: dict[str, Any]
    state: dict[str, torch.Tensor]


@dataclass
class TrainedModel:
    """A trained model, its stage-1 loss per epoch, and how it was trained.

    ``validation`` holds the validation scores after each epoch (empty without a
    validation split) and ``selected`` the epoch each of :data:`SELECTION_REGIMES` chose.
    """

    model: StudyModel
    loss_history: list[float]
    study_loss: str
    validation: list[dict[str, Any]] = field(default_factory=list)
    selected: dict[str, Selected] = field(default_factory=dict)


def build_losses(
    config: StudyConfig, study_loss: str, parallel: Parallel | None = None
) -> list[nn.Module]:
    """The registry losses one study loss trains with, configured from ``loss_options``.

    Under torchrun the embedding losses gather the global batch, so that each rank's
    anchors meet every rank's negatives and DDP's averaged gradient is exact.
    """
    losses = []
    for name in STUDY_LOSSES[study_loss].registry:
        options = dict(config.loss_options.get(name, {}))
        if parallel is not None and parallel.active and name != "cross_entropy":
            options["gather_distributed"] = True
        losses.append(create_loss(name, **options))
    return losses


class _Heads(nn.Module):
    """One forward for training: encoder features, projection and logits (DDP needs one)."""

    def __init__(self, model: StudyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection ``(N, P)`` and logits ``(N, 2)`` of ``images``."""
        features = self.model.encoder(images)
        return self.model.projection(features), self.model.classifier(features)


def init_seed(study_loss: str, seed: int) -> int:
    """The initialisation seed of one (loss, seed): independent across losses and seeds."""
    digest = hashlib.sha256(f"{study_loss}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def new_model(config: StudyConfig, study_loss: str, seed: int) -> StudyModel:
    """A freshly initialised model; initialisation depends on (loss, seed) alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(study_loss, seed))
        return StudyModel(config.model.arch, config.model.width, config.model.projection_dim)


def train(
    config: StudyConfig,
    study_loss: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device: torch.device,
    rescans: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
    parallel: Parallel | None = None,
    per_sample: dict[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    validation: LabelledImages | None = None,
) -> TrainedModel:
    """Train one model with one study loss on ``images`` ``(N, 1, [D,] H, W)``, ``labels`` ``(N,)``.

    The batch order and the views depend on ``seed`` alone, so every loss of one seed sees
    the same batches in the same order. Under torchrun every rank draws the same global
    batch and views, trains on its shard through DDP, and only rank 0 fits the linear
    classifier of stage 2.

    A multi-view loss sees, as view ``v`` of an image, its rescan ``v + 1`` (``rescans``
    ``(V, N, ...)``: the same nodule under new acquisition noise) under a random symmetry
    of the square; two views then differ only in what a rescan changes, never in a factor.
    Without ``rescans`` the views are symmetries of the one image.

    ``per_sample`` holds the ``(N,)`` inputs of the group-robust protocols, indexed like
    ``labels``: ``groups`` (GroupDRO), ``weights`` (JTT) or ``predictions`` (CnC).
    ``epochs`` overrides ``config.train.epochs`` (the identification model's run).

    With a ``validation`` split (drawn from the training distribution, never trained on)
    the model is scored on it after every epoch, with batch norm in eval mode
    (:func:`validation_scores`), and each of :data:`SELECTION_REGIMES` keeps the state
    of the epoch it chooses. Nothing else informs the choice.
    """
    t = config.train
    epochs = t.epochs if epochs is None else epochs
    per_sample = per_sample or {}
    how = STUDY_LOSSES[study_loss]
    parallel = parallel or Parallel()
    # Two streams, so that the batch order is the same for every loss of a seed whatever
    # number of views a loss draws.
    order_generator = torch.Generator().manual_seed(seed)
    view_generator = torch.Generator().manual_seed(seed + 1)
    model = new_model(config, study_loss, seed).to(device)
    layout = memory_layout(config)
    model = model.to(memory_format=layout)  # type: ignore[call-overload]
    heads: nn.Module = _Heads(model)
    if parallel.active:
        if device.type == "cuda":
            heads = nn.SyncBatchNorm.convert_sync_batchnorm(heads)  # type: ignore[no-untyped-call]
        # Each loss leaves one head unused: DDP must not wait for its gradients.
        heads = nn.parallel.DistributedDataParallel(
            heads,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    losses = build_losses(config, study_loss, parallel)
    projected = how.protocol in ("two_stage", "joint", "cnc")
    embedding_loss = losses[0] if projected else None
    cross_entropy = losses[-1] if how.registry[-1] == "cross_entropy" else None
    group_dro = losses[0] if how.protocol == "group_dro" else None

    parameters = list(model.encoder.parameters())
    if embedding_loss is not None:
        parameters += list(model.projection.parameters())
    if cross_entropy is not None or group_dro is not None:
        parameters += list(model.classifier.parameters())
    n = images.shape[0]
    steps_per_epoch = n // t.batch_size
    # One fused kernel updates every parameter (foreach still loops over op groups).
    optimizer = torch.optim.AdamW(parameters, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=t.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    history: list[float] = []
    scored: list[dict[str, Any]] = []
    selected: dict[str, Selected] = {}
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_generator)
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(steps_per_epoch):  # full batches only: pairs need partners
            index = order[step * t.batch_size : (step + 1) * t.batch_size]
            x, y = images[index].to(device), labels[index].to(device)
            extra = {
                name: parallel.shard(values[index].to(device))
                for name, values in per_sample.items()
            }
            # Views of the whole global batch (same on every rank), then this rank's shard.
            views = parallel.shard(
                rescan_views(rescans, index, how.views, view_generator).to(device)
                if rescans is not None and how.views > 1
                else dihedral_views(x, how.views, view_generator)
            )
            y = parallel.shard(y)
            with autocast_context(t.autocast, device):
                projections, logits = heads(views.flatten(0, 1).contiguous(memory_format=layout))
            projections, logits = projections.float(), logits.float()
            y_views = y.repeat_interleave(how.views)
            if group_dro is not None:
                loss = group_dro(logits, y, extra["groups"])
            elif how.protocol == "jtt":
                per_image = cross_entropy_loss(logits, y, reduction="none")
                loss = weighted_mean(per_image, extra["weights"], parallel)
            elif embedding_loss is None:
                loss = cross_entropy(logits, y_views)  # type: ignore[misc]
            else:
                z = projections.unflatten(0, (y.shape[0], how.views))
                if how.protocol == "cnc":
                    loss = embedding_loss(z, y, extra["predictions"])
                else:
                    loss = embedding_loss(z, y if how.uses_labels else None)
                if cross_entropy is not None:
                    loss = loss + t.ce_weight * cross_entropy(logits, y_views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            # Summed on the device; one synchronisation per epoch, not per step.
            epoch_loss += parallel.mean(loss) if parallel.active else loss.detach()
            if on_step is not None:
                on_step()
        history.append(float(epoch_loss) / steps_per_epoch)
        if validation is not None:
            scores = validation_scores(config, study_loss, model, images, labels, validation, seed)
            scores["epoch"] = len(history)
            scored.append(scores)
            for regime, key in SELECTION_KEYS.items():
                best = selected.get(regime)
                if best is None or scores[key] > best.scores[key]:
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    selected[regime] = Selected(len(history), scores, state)
            model.train()
    if not math.isfinite(history[-1]):
        raise RuntimeError(f"{study_loss}: training diverged (loss {history[-1]})")
    model.eval()
    return TrainedModel(model, history, study_loss, scored, selected)


#: The validation score each selection regime maximises.
SELECTION_KEYS = {"accuracy": "accuracy", "worst_group": "worst_group_accuracy"}


def validation_scores(
    config: StudyConfig,
    study_loss: str,
    model: StudyModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    validation: LabelledImages,
    seed: int,
) -> dict[str, Any]:
    """Accuracy, worst-group and per-group accuracy of the protocol's head on ``validation``.

    A two-stage loss has no classifier until stage 2, so its head here is stage 2's
    recipe (:func:`fit_linear_head`) on the frozen features of the first
    ``len(validation)`` training images: cheap, and trained on training data only.
    The model is left in eval mode.
    """
    from nodulebench.stats import group_accuracy

    from .runner import GROUPS

    device = next(model.parameters()).device
    precision = config.train.autocast
    features = encode(model, validation.images, device, precision)
    head: nn.Module = model.classifier
    if STUDY_LOSSES[study_loss].protocol == "two_stage":
        n = min(len(validation.labels), len(labels))
        head = fit_linear_head(
            config, encode(model, images[:n], device, precision), labels[:n], seed
        )
    predicted = (head_probabilities(head, features) >= 0.5).long()
    groups = group_accuracy(predicted, validation.labels, validation.groups, list(GROUPS))
    return {
        "accuracy": float((predicted == validation.labels).float().mean()),
        "worst_group_accuracy": groups.worst,
        "group_accuracy": groups.per_group,
    }


def selected_model(trained: TrainedModel, regime: str) -> StudyModel:
    """A copy of the trained model with the state the regime chose (eval mode)."""
    model = copy.deepcopy(trained.model)
    model.load_state_dict(trained.selected[regime].state)
    return model.eval()


def weighted_mean(
    per_image: torch.Tensor, weights: torch.Tensor, parallel: Parallel
) -> torch.Tensor:
    r"""JTT's loss: the weighted mean of per-image losses over the global batch.

    Under torchrun rank :math:`r` returns :math:`W \sum_{i \in r} w_i \ell_i / \sum_i w_i`,
    the weight sum taken over every rank (all-reduced, no gradient). DDP averages the
    ranks' gradients, so the average is the gradient of one process's weighted mean on
    the whole batch, however the weights fall on the ranks (the contract of
    :mod:`nodulebench.distributed`, as in GroupDRO and the gathered losses).

    Args:
        per_image: ``(B,)`` this rank's per-image losses.
        weights: ``(B,)`` their weights (positive).
        parallel: this rank's place among the ranks.
    """
    if not parallel.active:
        return (weights * per_image).sum() / weights.sum()
    global_weight = sum_over_ranks(weights.sum())
    return parallel.world_size * (weights * per_image).sum() / global_weight


def identify(
    config: StudyConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device: torch.device,
    parallel: Parallel | None = None,
) -> torch.Tensor:
    """The identification model's predictions ``(N,)`` on its own training set.

    A cross-entropy model (the study's, stopped after ``identification_epochs``); JTT
    upweights its errors, CnC contrasts its predictions, ``group_dro_inferred`` groups by
    label x its correctness.
    """
    trained = train(
        config,
        "cross_entropy",
        images,
        labels,
        seed,
        device,
        parallel=parallel,
        epochs=config.train.identification_epochs,
    )
    features = encode(trained.model, images, device, config.train.autocast)
    return (head_probabilities(trained.model.classifier, features) >= 0.5).long()


def memory_layout(config: StudyConfig) -> torch.memory_format:
    """The convolutions' memory format: channels-last (2-D or 3-D) or contiguous."""
    if not config.train.channels_last:
        return torch.contiguous_format
    return torch.channels_last if config.data.dims == 2 else torch.channels_last_3d


def autocast_context(dtype: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the encoder and heads (the losses then run in float32)."""
    if dtype == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def encode(
    model: StudyModel,
    images: torch.Tensor,
    device: torch.device,
    autocast: str = "none",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Float32 encoder features ``(N, D)`` in eval mode, on the device.

    ``autocast`` is the training's ``train.autocast``: the encoder is read in the
    precision it was trained in.
    """
    model.eval()
    with autocast_context(autocast, device):
        return torch.cat(
            [
                model.encoder(images[i : i + batch_size].to(device)).float()
                for i in range(0, images.shape[0], batch_size)
            ]
        )


def fit_linear_head(
    config: StudyConfig, features: torch.Tensor, labels: torch.Tensor, seed: int
) -> nn.Linear:
    """A linear classifier fitted by full-batch Adam and cross-entropy on frozen features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        head = nn.Linear(features.shape[1], 2).to(features.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.train.linear_lr)
    target = labels.to(features.device)
    for _ in range(config.train.linear_steps):  # full batch: deterministic and fast
        loss = nn.functional.cross_entropy(head(features), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return head


def fit_heads(
    config: StudyConfig,
    trained: TrainedModel,
    train_set: LabelledImages,
    dfr_set: LabelledImages,
    seed: int,
    device: torch.device,
) -> dict[str, nn.Module]:
    """The linear heads read on one encoder: ``model`` (the protocol's), ``linear``, ``dfr``.

    ``linear`` is refit on the frozen features of the (biased) training set: for a
    two-stage loss it *is* the protocol's head, which this also installs in the model.
    ``dfr`` is refit on the small group-balanced set (last-layer retraining).
    """
    model = trained.model
    precision = config.train.autocast
    linear = fit_linear_head(
        config, encode(model, train_set.images, device, precision), train_set.labels, seed
    )
    if STUDY_LOSSES[trained.study_loss].protocol == "two_stage":
        model.classifier = linear
    dfr = fit_linear_head(
        config, encode(model, dfr_set.images, device, precision), dfr_set.labels, seed
    )
    return {"model": model.classifier, "linear": linear, "dfr": dfr}


@torch.no_grad()
def head_probabilities(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Probability of class 1 (malignant) ``(N,)`` from a head on features, on the CPU."""
    probabilities: torch.Tensor = head(features).softmax(dim=1)[:, 1].cpu()
    return probabilities
