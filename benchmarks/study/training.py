"""Training protocols of the study.

* ``cross_entropy``: encoder + linear classifier trained end to end with cross-entropy.
* embedding losses (``supcon``, ``contrastive``, ``triplet``, ``multi_similarity``,
  ``ntxent``): the SupCon protocol — stage 1 trains encoder + projection head with the loss
  on two views per image; stage 2 trains a linear classifier with cross-entropy on the frozen
  encoder's features. ``ntxent`` ignores the labels in stage 1 (self-supervised).
* ``supcon_ce``: encoder, projection head and classifier trained jointly with
  SupCon + ``ce_weight`` x cross-entropy; the classifier is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nodulebench import create_loss

from .augment import dihedral_views
from .config import STUDY_LOSSES, StudyConfig
from .models import StudyModel
from .parallel import Parallel


@dataclass
class TrainedModel:
    """A trained model and its stage-1 loss per epoch."""

    model: StudyModel
    loss_history: list[float]


def build_losses(config: StudyConfig, study_loss: str,
                 parallel: Parallel | None = None) -> list[nn.Module]:
    """The registry losses one study loss trains with, configured from ``loss_options``.

    Under torchrun the embedding losses gather the global batch, so that each rank's
    anchors meet every rank's negatives and DDP's averaged gradient is exact.
    """
    losses = []
    for name in STUDY_LOSSES[study_loss]:
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


def new_model(config: StudyConfig, seed: int) -> StudyModel:
    """A freshly initialised model; initialisation depends on ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StudyModel(config.model.arch, config.model.width, config.model.projection_dim)


def train(
    config: StudyConfig,
    study_loss: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    device: torch.device,
    on_step: Callable[[], None] | None = None,
    parallel: Parallel | None = None,
) -> TrainedModel:
    """Train one model with one study loss on ``images`` ``(N, 1, H, W)`` / ``labels`` ``(N,)``.

    Under torchrun every rank draws the same global batch and views, trains on its shard
    through DDP, and only rank 0 fits the linear classifier of stage 2.
    """
    t = config.train
    parallel = parallel or Parallel()
    generator = torch.Generator().manual_seed(seed)
    model = new_model(config, seed).to(device)
    heads: nn.Module = _Heads(model)
    if parallel.active:
        if device.type == "cuda":
            heads = nn.SyncBatchNorm.convert_sync_batchnorm(heads)
        # Each loss leaves one head unused: DDP must not wait for its gradients.
        heads = nn.parallel.DistributedDataParallel(
            heads, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    losses = build_losses(config, study_loss, parallel)
    embedding_loss = None if study_loss == "cross_entropy" else losses[0]
    cross_entropy = losses[-1] if STUDY_LOSSES[study_loss][-1] == "cross_entropy" else None
    use_labels = study_loss != "ntxent"

    parameters = list(model.encoder.parameters())
    parameters += list((model.projection if embedding_loss else model.classifier).parameters())
    if study_loss == "supcon_ce":
        parameters += list(model.classifier.parameters())
    n = images.shape[0]
    batch_size = min(t.batch_size, n)
    steps_per_epoch = n // batch_size
    optimizer = torch.optim.AdamW(parameters, lr=t.lr, weight_decay=t.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=t.lr, total_steps=t.epochs * steps_per_epoch, pct_start=0.15
    )
    history = []
    model.train()
    for _ in range(t.epochs):
        order = torch.randperm(n, generator=generator)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):  # full batches only: pairs need partners
            index = order[step * batch_size:(step + 1) * batch_size]
            x, y = images[index].to(device), labels[index].to(device)
            # Views of the whole global batch (same on every rank), then this rank's shard.
            views = parallel.shard(dihedral_views(x, 1 if embedding_loss is None else 2,
                                                  generator))
            y = parallel.shard(y)
            projections, logits = heads(views.flatten(0, 1))
            if embedding_loss is None:
                loss = cross_entropy(logits, y)  # type: ignore[misc]
            else:
                z = projections.unflatten(0, (y.shape[0], 2))
                loss = embedding_loss(z, y if use_labels else None)
                if cross_entropy is not None:
                    loss = loss + t.ce_weight * cross_entropy(logits, y.repeat_interleave(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss += parallel.mean(loss) if parallel.active else float(loss.detach())
            if on_step is not None:
                on_step()
        history.append(epoch_loss / steps_per_epoch)
    if not math.isfinite(history[-1]):
        raise RuntimeError(f"{study_loss}: training diverged (loss {history[-1]})")
    if embedding_loss is not None and cross_entropy is None and parallel.is_main:
        fit_linear_classifier(config, model, images, labels, seed, device)
    model.eval()
    return TrainedModel(model, history)


@torch.no_grad()
def encode(model: StudyModel, images: torch.Tensor, device: torch.device,
           batch_size: int = 512) -> torch.Tensor:
    """Encoder features ``(N, D)`` in eval mode, on the CPU."""
    model.eval()
    return torch.cat([model.encoder(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, images.shape[0], batch_size)])


def fit_linear_classifier(config: StudyConfig, model: StudyModel, images: torch.Tensor,
                          labels: torch.Tensor, seed: int, device: torch.device) -> None:
    """Stage 2: fit ``model.classifier`` by cross-entropy on frozen encoder features."""
    features = encode(model, images, device).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model.classifier.reset_parameters()
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=config.train.linear_lr)
    target = labels.to(device)
    for _ in range(config.train.linear_steps):  # full batch: deterministic and fast
        loss = nn.functional.cross_entropy(model.classifier(features), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def predict_proba(model: StudyModel, images: torch.Tensor, device: torch.device,
                  batch_size: int = 512) -> torch.Tensor:
    """Probability of class 1 (malignant) ``(N,)``, on the CPU."""
    model.eval()
    logits = torch.cat([model(images[i:i + batch_size].to(device)).cpu()
                        for i in range(0, images.shape[0], batch_size)])
    return logits.softmax(dim=1)[:, 1]
