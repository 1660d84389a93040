"""Interventions on the generator: which factors a model actually *uses*.

A probe tells whether a factor can be decoded from the features; it cannot tell whether
the model's decision depends on it. Here every factor is moved on its own, with the
same exogenous noise (true counterfactual pairs rendered by the generator), and the
change of the model's output is measured.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from nodulebench._progress import progress_bar
from nodulebench._validation import check_int, did_you_mean
from nodulebench.data import FACTORS
from nodulebench.probing.features import (
    capture_outputs,
    evaluation_mode,
    model_device,
    pool_features,
    resolve_layers,
)
from nodulebench.probing.records import SensitivityResult

__all__ = ["InterventionDataset", "RenderCache", "intervention_sensitivity"]

log = logging.getLogger(__name__)

_PERCENTILES = (10.0, 90.0)


class InterventionDataset(Protocol):
    """What :func:`intervention_sensitivity` needs of a dataset.

    :class:`~nodulebench.SyntheticNodules` provides it: ``len``, the ``factors`` of every
    sample, and a batched ``render`` whose ``overrides`` re-render the given samples with
    the same exogenous noise and only the named factors changed.
    """

    @property
    def factors(self) -> Mapping[str, torch.Tensor]:
        """``{name: (n,)}`` factor values of every sample."""

    def __len__(self) -> int:
        """Number of samples."""

    def render(
        self,
        indices: Any,
        device: Any = None,
        return_masks: bool = False,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """``(N, 1, H, W)`` images of the given samples, with factors overridden."""


def _dataset_check(dataset: Any) -> None:
    missing = [a for a in ("factors", "render", "__len__") if not hasattr(dataset, a)]
    if missing:
        raise TypeError(
            "dataset must provide factors, __len__ and render(indices, device, "
            "return_masks, overrides), as SyntheticNodules does (interventions re-render "
            f"samples); got {type(dataset).__name__}, which lacks {', '.join(missing)}"
        )


def _key_part(value: Any) -> Any:
    """A hashable stand-in for an index list or an override value."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (str(value.dtype), tuple(value.shape), value.numpy().tobytes())
    if isinstance(value, (range, list, tuple, np.ndarray)):
        array = np.asarray(value)
        return (str(array.dtype), array.shape, array.tobytes())
    return repr(value)


def _copy(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, tuple):
        return tuple(_copy(part) for part in batch)
    if isinstance(batch, Mapping):
        return {name: _copy(part) for name, part in batch.items()}
    return batch


class RenderCache:
    """A dataset that keeps every batch it renders, to analyse several models on one set.

    :func:`intervention_sensitivity` renders the same samples with the same overrides for
    each model it is given. Wrap the dataset once and pass the wrapper for every model:
    each counterfactual batch is rendered once. Rendering is deterministic, so a cached
    batch is the batch a fresh ``render`` returns; each call returns a copy, so editing a
    batch in place leaves the cache intact. The cache holds every distinct batch in
    memory (256 samples at 32 px moved along the 23 factors of ``NoduleSpec()`` is about
    60 MB); :meth:`clear` empties it.

    Args:
        dataset: Any :class:`InterventionDataset`, e.g. a
            :class:`~nodulebench.SyntheticNodules`.

    Raises:
        TypeError: If ``dataset`` lacks ``factors``, ``__len__`` or ``render``.

    Example:
        >>> from nodulebench import SyntheticNodules
        >>> from nodulebench.probing import RenderCache
        >>> cached = RenderCache(SyntheticNodules(n=8, seed=0, image_size=32))
        >>> first = cached.render(range(4), overrides={"texture": 2})
        >>> again = cached.render(range(4), overrides={"texture": 2})
        >>> bool((first == again).all()), cached.renders, cached.hits
        (True, 1, 1)
    """

    def __init__(self, dataset: InterventionDataset) -> None:
        _dataset_check(dataset)
        self.dataset = dataset
        self._batches: dict[Any, Any] = {}
        #: Calls that rendered (the cache's misses) and calls answered from the cache.
        self.renders = 0
        self.hits = 0

    @property
    def factors(self) -> Mapping[str, torch.Tensor]:
        """The wrapped dataset's ``{name: (n,)}`` factor values."""
        return self.dataset.factors

    def __len__(self) -> int:
        return len(self.dataset)

    def render(
        self,
        indices: Any,
        device: Any = None,
        return_masks: bool = False,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """The wrapped dataset's ``render``, answered from the cache when seen before."""
        key = (
            _key_part(indices),
            str(device),
            bool(return_masks),
            tuple(sorted((name, _key_part(value)) for name, value in (overrides or {}).items())),
        )
        if key in self._batches:
            self.hits += 1
        else:
            self._batches[key] = self.dataset.render(
                indices, device=device, return_masks=return_masks, overrides=overrides
            )
            self.renders += 1
        return _copy(self._batches[key])

    def clear(self) -> None:
        """Forget every cached batch."""
        self._batches.clear()


def _malignant_probability(output: torch.Tensor, rows: int) -> torch.Tensor:
    """``(N, 2)`` logits -> softmax's class 1; ``(N,)`` / ``(N, 1)`` logit -> sigmoid."""
    if output.ndim == 0 or output.shape[0] != rows:
        raise ValueError(
            f"the model must return one row of logits per image ({rows}); "
            f"got shape {tuple(output.shape)}"
        )
    if output.ndim == 2 and output.shape[1] == 2:
        return torch.softmax(output.double(), dim=1)[:, 1]
    if output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1):
        return torch.sigmoid(output.double().reshape(-1))
    raise ValueError(
        "the model must return binary logits (N, 2), (N, 1) or (N,) (malignant logit); "
        f"got shape {tuple(output.shape)}"
    )


def _as_number(name: str, value: float | str) -> float:
    """A value of ``values[name]`` as a number; category names become their codes."""
    if isinstance(value, str):
        categories = FACTORS[name].categories if name in FACTORS else ()
        if value not in categories:
            raise ValueError(
                f"values[{name!r}] must hold numbers or category names of {name} "
                f"{categories}; got {value!r}{did_you_mean(value, categories)}"
            )
        return float(categories.index(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"values[{name!r}] must hold numbers; got {type(value).__name__}")
    return float(value)


def _choose_values(
    name: str, observed: torch.Tensor, given: Sequence[float | str] | None
) -> tuple[tuple[float, ...], str] | None:
    """The values to move a factor between, and where they came from (None: degenerate)."""
    if given is not None:
        chosen = tuple(_as_number(name, v) for v in given)
        if len(chosen) < 2 or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"values[{name!r}] must hold at least two distinct values; got {list(given)}"
            )
        return chosen, "user"
    data = observed.detach().cpu().numpy()
    if not observed.is_floating_point():
        categories = tuple(float(c) for c in np.unique(data))
        return (categories, "categories") if len(categories) >= 2 else None
    low, high = (float(v) for v in np.percentile(data.astype(np.float64), _PERCENTILES))
    return ((low, high), "percentiles") if high > low else None


class _Runner:
    """Renders batches and runs the model on them, collecting probabilities/embeddings."""

    def __init__(
        self,
        model: nn.Module,
        dataset: InterventionDataset,
        indices: torch.Tensor,
        batch_size: int,
        device: torch.device,
        embedding_layer: str | None,
        captured: dict[str, torch.Tensor],
    ) -> None:
        self.model, self.dataset, self.indices = model, dataset, indices
        self.batch_size, self.device = batch_size, device
        self.embedding_layer, self.captured = embedding_layer, captured

    def __call__(
        self, overrides: Mapping[str, tuple[float, torch.dtype]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        probabilities, embeddings = [], []
        for chunk in torch.split(self.indices, self.batch_size):
            batch_overrides = {
                name: torch.full(
                    (chunk.numel(),),
                    value if dtype.is_floating_point else int(value),
                    dtype=dtype,
                    device=self.device,
                )
                for name, (value, dtype) in overrides.items()
            }
            images = self.dataset.render(chunk, device=self.device, overrides=batch_overrides)
            if not isinstance(images, torch.Tensor):
                raise TypeError(f"dataset.render must return a tensor; got {type(images).__name__}")
            self.captured.clear()
            probabilities.append(_malignant_probability(self.model(images), chunk.numel()).cpu())
            if self.embedding_layer is not None:
                if self.embedding_layer not in self.captured:
                    raise ValueError(
                        f"embedding_layer: module {self.embedding_layer!r} was not called "
                        "in the forward pass"
                    )
                embedding = pool_features(self.captured[self.embedding_layer])
                embeddings.append(embedding.to("cpu", torch.float64))
        return torch.cat(probabilities), (torch.cat(embeddings) if embeddings else None)


def intervention_sensitivity(
    model: nn.Module,
    dataset: InterventionDataset,
    *,
    factors: Sequence[str] | None = None,
    n: int = 256,
    seed: int = 0,
    values: Mapping[str, Sequence[float | str]] | None = None,
    embedding_layer: str | None = None,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[SensitivityResult]:
    r"""How much the model's output changes when one factor alone is changed.

    ``n`` samples are drawn from the dataset (without replacement, seeded). For each
    factor and each pair of values :math:`(a, b)` the same samples are rendered twice
    with ``dataset.render(indices, overrides={factor: a})`` and ``{factor: b}`` (same
    exogenous noise, every other factor as sampled), and the two outputs are compared:

    * ``flip_rate``: share of pairs whose predicted class (:math:`p > 0.5`) differs;
    * ``mean_abs_probability_change``: mean of :math:`|p_b - p_a|`, with :math:`p` the
      malignant probability (softmax class 1 of ``(N, 2)`` logits, or the sigmoid of a
      single logit);
    * ``mean_probability_change``: mean of :math:`p_b - p_a` (the direction);
    * with ``embedding_layer``: mean :math:`\lVert e_b - e_a\rVert_2` of that module's
      globally pooled output, and the same divided by the root-mean-square distance
      between two factual embeddings of the sampled images,
      :math:`\sqrt{2\sum_j \operatorname{Var}(e_j)}`.

    Which values a factor moves between:

    * continuous factors (floating ``dataset.factors``): the dataset's own 10th and 90th
      percentiles, one pair;
    * categorical factors (integer codes): every pair of the categories present in the
      dataset; the metrics are averaged over the pairs;
    * ``values={factor: [v1, v2, ...]}`` overrides both: every pair :math:`(v_i, v_j)`,
      :math:`i < j`, in the given order is used.

    This separates "the model uses size" (a large change here) from "size is decodable"
    (a high :func:`~nodulebench.probing.probe_factors` score).

    Args:
        model: Maps images ``(N, 1, H, W)`` to logits ``(N, 2)``, ``(N, 1)`` or ``(N,)``
            (the malignant logit). Runs in eval mode without gradients.
        dataset: A :class:`~nodulebench.SyntheticNodules` (or anything with its
            ``factors``, ``__len__`` and batched ``render(..., overrides=...)``).
        factors: Names to intervene on, in order; default every factor that varies in the
            dataset (a factor the dataset holds fixed is skipped unless ``values`` names
            it). A named factor that does not vary and has no ``values`` raises.
        n: Number of samples (capped at ``len(dataset)``).
        seed: Seed of the sample draw.
        values: Optional ``{factor: values}`` to move between instead of the defaults;
            categories may be given by name (``{"calcification": ["absent", "central"]}``)
            and are reported as codes.
        embedding_layer: Optional module name in ``model`` whose output is the embedding.
        batch_size: Images rendered and evaluated at once.
        device: Where rendering and the model run; default the model's device.
        progress: show a progress bar over the factors (needs tqdm, e.g. from the
            ``study`` extra). The ``"nodulebench"`` logger reports start and duration at
            INFO level either way.

    Returns:
        One :class:`~nodulebench.probing.SensitivityResult` per factor.

    Raises:
        ValueError: If a factor is unknown or does not vary, ``values`` is malformed, the
            dataset is empty, the embedding is constant, or the model output is not
            binary logits.
        TypeError: If an argument has the wrong type.

    Example:
        >>> from torch import nn
        >>> from nodulebench import SyntheticNodules
        >>> from nodulebench.probing import intervention_sensitivity
        >>> ds = SyntheticNodules(n=32, seed=0, image_size=16)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2))
        >>> [r] = intervention_sensitivity(model, ds, factors=["diameter_mm"], n=8)
        >>> r.factor, r.values_from, 0.0 <= r.flip_rate <= 1.0
        ('diameter_mm', 'percentiles', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    _dataset_check(dataset)
    size = len(dataset)
    if size == 0:
        raise ValueError("dataset must contain at least one sample; got an empty dataset")
    observed = dataset.factors
    given = dict(values or {})
    for name in given:
        if name not in observed:
            raise ValueError(
                f"values names unknown factor {name!r}; known: {list(observed)}"
                f"{did_you_mean(name, observed)}"
            )
    if factors is None:
        names = list(observed)
    elif isinstance(factors, str):
        raise TypeError(f"factors must be a sequence of names; got the string {factors!r}")
    else:
        names = list(factors)
        for name in names:
            if name not in observed:
                raise ValueError(
                    f"factors: unknown factor {name!r}; known: {list(observed)}"
                    f"{did_you_mean(name, observed)}"
                )
    plans = []
    for name in names:
        choice = _choose_values(name, observed[name], given.get(name))
        if choice is None:
            if factors is None:
                continue
            raise ValueError(
                f"factors: {name!r} does not vary in the dataset; pass values={{{name!r}: "
                "[a, b]}} to choose what to move it between"
            )
        plans.append((name, observed[name], *choice))
    if embedding_layer is not None:
        resolve_layers(model, embedding_layer)
    target = model_device(model) if device is None else torch.device(device)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(size, size=min(n, size), replace=False))
    indices = torch.from_numpy(picked.astype(np.int64))
    hooked = [embedding_layer] if embedding_layer is not None else []

    results = []
    with evaluation_mode(model), torch.no_grad(), capture_outputs(model, hooked) as captured:
        run = _Runner(model, dataset, indices, batch_size, target, embedding_layer, captured)
        spread = None
        if embedding_layer is not None:
            _, factual = run({})
            assert factual is not None  # an embedding layer was given
            spread = float(torch.sqrt(2.0 * factual.var(dim=0, correction=0).sum()))
            if spread == 0.0:
                raise ValueError(
                    f"embedding_layer {embedding_layer!r} gives the same embedding for every "
                    "sample; its displacement cannot be compared with its spread"
                )
        start = time.perf_counter()
        log.info("interventions on %d factor(s), %d samples each", len(plans), int(indices.numel()))
        bar = progress_bar(plans, enabled=progress, total=len(plans), desc="interventions")
        for name, column, chosen, source in bar:
            dtype = column.dtype
            flips, abs_changes, changes, displacements = [], [], [], []
            # Each value is rendered once; every pair compares the cached outputs.
            outputs = {value: run({name: (value, dtype)}) for value in chosen}
            for a, b in itertools.combinations(chosen, 2):
                (p_a, e_a), (p_b, e_b) = outputs[a], outputs[b]
                flips.append(float(((p_a > 0.5) != (p_b > 0.5)).double().mean()))
                abs_changes.append(float((p_b - p_a).abs().mean()))
                changes.append(float((p_b - p_a).mean()))
                if e_a is not None and e_b is not None:
                    displacements.append(float(torch.linalg.vector_norm(e_b - e_a, dim=1).mean()))
            displacement = float(np.mean(displacements)) if displacements else None
            results.append(
                SensitivityResult(
                    factor=name,
                    kind="continuous" if column.is_floating_point() else "categorical",
                    values=chosen,
                    values_from=source,
                    n_samples=int(indices.numel()),
                    n_pairs=len(flips),
                    flip_rate=float(np.mean(flips)),
                    mean_abs_probability_change=float(np.mean(abs_changes)),
                    mean_probability_change=float(np.mean(changes)),
                    embedding_displacement=displacement,
                    relative_embedding_displacement=(
                        None if displacement is None or spread is None else displacement / spread
                    ),
                )
            )
        log.info("interventions done in %.1f s", time.perf_counter() - start)
    return results
