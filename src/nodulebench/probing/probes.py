r"""Cross-validated linear probes: which factors can be read linearly from features.

A probe that scores high says a factor is *decodable*; it does not say the model uses it
(see :func:`~nodulebench.probing.intervention_sensitivity` for that). Each probe is
paired with a control, the same probe trained and scored on shuffled targets, so a
score is read against what a probe of that capacity fits by chance.

Everything runs in float64 with torch and numpy; no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from nodulebench._validation import check_int, check_ndim, check_positive
from nodulebench.probing.records import ProbeResult

__all__ = ["probe_factors"]

# Ridge penalties tried on each training split, relative to its size n: alpha = n * c.
# With standardized features, c is the penalty per sample, independent of n.
_RIDGE_PENALTIES = tuple(10.0**k for k in range(-4, 3))


def _fold_ids(
    target: np.ndarray, folds: int, stratified: bool, rng: np.random.Generator
) -> np.ndarray:
    """Fold index of every sample; stratified folds deal each class round-robin."""
    n = target.shape[0]
    ids = np.empty(n, dtype=np.int64)
    if not stratified:
        ids[rng.permutation(n)] = np.arange(n) % folds
        return ids
    offset = 0
    for code in np.unique(target):
        members = np.flatnonzero(target == code)
        ids[rng.permutation(members)] = (offset + np.arange(members.size)) % folds
        offset += members.size
    return ids


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale by the training split's mean and std; a constant feature gets std 1."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _ridge_predict(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor
) -> torch.Tensor:
    """Ridge regression with the penalty chosen by exact leave-one-out error.

    For centered data ``Z = U S V^T`` the fit with penalty ``alpha`` is
    ``w = V diag(s / (s^2 + alpha)) U^T y`` and its hat matrix has diagonal
    ``h_i = 1/n + sum_k U_ik^2 s_k^2 / (s_k^2 + alpha)``; the leave-one-out residual is
    ``r_i / (1 - h_i)``, so every penalty is scored from one SVD.
    """
    n = x_train.shape[0]
    y_mean = y_train.mean()
    yc = y_train - y_mean
    u, s, vh = torch.linalg.svd(x_train, full_matrices=False)
    uty = u.T @ yc
    best: tuple[float, torch.Tensor] | None = None
    for penalty in _RIDGE_PENALTIES:
        shrink = s**2 / (s**2 + n * penalty)
        residual = yc - u @ (shrink * uty)
        leverage = (u**2) @ shrink + 1.0 / n
        loo = float(((residual / (1.0 - leverage).clamp_min(1e-12)) ** 2).mean())
        if best is None or loo < best[0]:
            coef = vh.T @ (s / (s**2 + n * penalty) * uty)
            best = (loo, coef)
    assert best is not None  # the penalty grid is not empty
    return x_test @ best[1] + y_mean


def _logistic_objective(
    x: torch.Tensor, onehot: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Penalized mean cross-entropy and its exact gradients ``(loss, dW, db)``.

    ``loss = -mean_i log softmax(x_i W + b)[y_i] + (l2 / 2) ||W||_F^2``; with ``P`` the
    softmax probabilities, ``dW = x^T (P - Y) / n + l2 W`` and ``db = mean_i (P - Y)_i``.
    Written out because autograd's per-call overhead dominates on these tiny problems.
    """
    log_p = torch.log_softmax(x @ weight + bias, dim=1)
    n = x.shape[0]
    loss = -(log_p * onehot).sum() / n + 0.5 * l2 * (weight**2).sum()
    residual = (log_p.exp() - onehot) / n
    return loss, x.T @ residual + l2 * weight, residual.sum(dim=0)


def _logistic_predict(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int,
    l2: float,
) -> torch.Tensor:
    """Multinomial logistic regression by L-BFGS; returns the predicted class codes.

    Minimizes ``mean cross-entropy + (l2 / 2) * ||W||_F^2`` (the intercept is not
    penalized), from zeros, with a strong-Wolfe line search: deterministic on a device.
    """
    d = x_train.shape[1]
    weight = torch.zeros(d, n_classes, dtype=torch.float64)
    bias = torch.zeros(n_classes, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(y_train, n_classes).to(torch.float64)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=100, tolerance_grad=1e-7, tolerance_change=1e-10,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        loss, weight.grad, bias.grad = _logistic_objective(x_train, onehot, weight, bias, l2)
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return (x_test @ weight + bias).argmax(dim=1)


def _r2(y_true: torch.Tensor, y_pred: torch.Tensor, factor: str) -> float:
    total = float(((y_true - y_true.mean()) ** 2).sum())
    if total <= 0.0:
        raise ValueError(
            f"factors[{factor!r}] is constant within a held-out fold, so R^2 is undefined; "
            "use fewer folds or more samples"
        )
    return 1.0 - float(((y_true - y_pred) ** 2).sum()) / total


def _balanced_accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    recalls = [float((y_pred[y_true == c] == c).double().mean()) for c in torch.unique(y_true)]
    return float(np.mean(recalls))


def _cross_validate(
    x: torch.Tensor, target: np.ndarray, categorical: bool, folds: int,
    rng: np.random.Generator, factor: str, l2: float,
) -> list[float]:
    ids = _fold_ids(target, folds, categorical, rng)
    if categorical:
        _, codes = np.unique(target, return_inverse=True)
        y = torch.from_numpy(codes.astype(np.int64))
        n_classes = int(codes.max()) + 1
    else:
        y = torch.from_numpy(target.astype(np.float64))
    scores = []
    for fold in range(folds):
        test = torch.from_numpy(ids == fold)
        x_train, x_test = _standardize(x[~test], x[test])
        if categorical:
            predicted = _logistic_predict(x_train, y[~test], x_test, n_classes, l2)
            scores.append(_balanced_accuracy(y[test], predicted))
        else:
            predicted = _ridge_predict(x_train, y[~test], x_test)
            scores.append(_r2(y[test], predicted, factor))
    return scores


def probe_factors(
    features: torch.Tensor | Mapping[str, torch.Tensor],
    factors: Mapping[str, torch.Tensor],
    *,
    folds: int = 5,
    seed: int = 0,
    logistic_l2: float = 1e-2,
) -> list[ProbeResult]:
    r"""Cross-validated linear probes of every factor from every feature set.

    For each factor a linear probe is trained on ``folds - 1`` folds and scored on the
    held-out one; features are standardized per fold with the training split's mean and
    standard deviation only (a constant feature is left unscaled).

    * Continuous factors (floating dtype): ridge regression with an intercept, the
      penalty :math:`\alpha = n\,c`, :math:`c \in \{10^{-4}, \dots, 10^{2}\}` picked on
      each training split by exact leave-one-out error (one SVD per split); scored by
      :math:`R^2 = 1 - \sum (y - \hat y)^2 / \sum (y - \bar y)^2` on the held-out fold
      (chance: 0, or slightly below).
    * Categorical factors (integer dtype, e.g. the int64 codes in the ``factors`` of a
      :class:`~nodulebench.SyntheticNodules`): multinomial logistic regression, mean
      cross-entropy plus :math:`\tfrac{\lambda}{2}\lVert W\rVert_F^2` with
      :math:`\lambda` = ``logistic_l2``, fitted by L-BFGS in float64 from zeros; folds
      are stratified by class; scored by balanced accuracy (mean per-class recall over
      the classes present in the held-out fold; chance :math:`1/K`).

    The control repeats the procedure with the targets permuted (same seed stream, fresh
    folds); ``selectivity = score - control``. Everything is deterministic given
    ``seed`` and never touches the global RNG.

    Args:
        features: ``(N, D)`` features, or ``{layer: (N, D_layer)}`` as returned by
            :func:`~nodulebench.probing.extract_features`. A bare tensor is reported
            under the layer name ``"features"``.
        factors: ``{name: (N,)}`` factor values in the same row order, e.g.
            ``dataset.factors``. Floating tensors are probed as continuous, integer or
            bool tensors as categorical.
        folds: Number of cross-validation folds, ``>= 2``.
        seed: Seed of the fold assignment and of the control's permutation.
        logistic_l2: The L2 penalty :math:`\lambda > 0` of the logistic probe.

    Returns:
        One :class:`~nodulebench.probing.ProbeResult` per layer and factor, layers in
        the given order, factors in the given order within each layer.

    Raises:
        ValueError: If a row count differs between features and factors, a factor is
            constant, ``folds`` exceeds the number of samples (or a class's size is
            smaller than 2 for a categorical factor), or a value is not finite.
        TypeError: If an argument has the wrong type.

    Example:
        >>> import torch
        >>> from nodulebench.probing import probe_factors
        >>> g = torch.Generator().manual_seed(0)
        >>> size = torch.rand(200, generator=g, dtype=torch.float64)
        >>> feats = torch.randn(200, 8, generator=g)
        >>> feats[:, 0] += 10 * size.float()  # signal variance 8.3 over unit noise
        >>> [r] = probe_factors(feats, {"diameter_mm": size})
        >>> r.metric, r.score > 0.8, abs(r.control) < 0.1
        ('r2', True, True)
    """
    check_int("folds", folds, 2)
    check_int("seed", seed, 0)
    check_positive("logistic_l2", logistic_l2)
    feature_sets = {"features": features} if isinstance(features, torch.Tensor) else features
    if not isinstance(feature_sets, Mapping) or not feature_sets:
        raise TypeError(
            "features must be a tensor (N, D) or a non-empty mapping of them; "
            f"got {type(features).__name__}"
        )
    if not isinstance(factors, Mapping) or not factors:
        raise TypeError(
            f"factors must be a non-empty mapping name -> (N,) tensor; got {factors!r:.80}"
        )
    matrices: dict[str, torch.Tensor] = {}
    n_rows: int | None = None
    for layer, matrix in feature_sets.items():
        check_ndim(f"features[{layer!r}]", matrix, (2,), "(N, D)")
        if n_rows is not None and matrix.shape[0] != n_rows:
            raise ValueError(
                f"features[{layer!r}] must have {n_rows} rows like the other layers; "
                f"got {matrix.shape[0]}"
            )
        n_rows = matrix.shape[0]
        x = matrix.detach().to("cpu", torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError(f"features[{layer!r}] must be finite; got NaN or inf values")
        matrices[layer] = x
    assert n_rows is not None  # the mapping is not empty
    if folds > n_rows:
        raise ValueError(f"folds must be <= the number of samples {n_rows}; got {folds}")
    targets: dict[str, tuple[np.ndarray, bool]] = {}
    for name, values in factors.items():
        check_ndim(f"factors[{name!r}]", values, (1,), "(N,)")
        if values.shape[0] != n_rows:
            raise ValueError(
                f"factors[{name!r}] must have one value per feature row ({n_rows}); "
                f"got {values.shape[0]}"
            )
        categorical = not values.is_floating_point()
        target = values.detach().cpu().numpy()
        if categorical:
            counts = np.unique(target, return_counts=True)[1]
            if counts.size < 2 or counts.min() < 2:
                raise ValueError(
                    f"factors[{name!r}] must have at least 2 classes and at least 2 samples "
                    f"in every class present; got class sizes {counts.tolist()}"
                )
        else:
            target = target.astype(np.float64)
            if not np.isfinite(target).all():
                raise ValueError(f"factors[{name!r}] must be finite; got NaN or inf values")
            if np.ptp(target) == 0:
                raise ValueError(
                    f"factors[{name!r}] is constant ({target[0]!r}); nothing to probe"
                )
        targets[name] = (target, categorical)

    results = []
    for layer, x in matrices.items():
        for name, (target, categorical) in targets.items():
            probe_rng, control_rng = (
                np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
            )
            scores = _cross_validate(x, target, categorical, folds, probe_rng, name, logistic_l2)
            shuffled = target[control_rng.permutation(n_rows)]
            controls = _cross_validate(
                x, shuffled, categorical, folds, control_rng, name, logistic_l2
            )
            score, control = float(np.mean(scores)), float(np.mean(controls))
            results.append(
                ProbeResult(
                    layer=layer,
                    factor=name,
                    kind="categorical" if categorical else "continuous",
                    metric="balanced_accuracy" if categorical else "r2",
                    score=score,
                    score_std=float(np.std(scores)),
                    control=control,
                    control_std=float(np.std(controls)),
                    selectivity=score - control,
                    chance=1.0 / np.unique(target).size if categorical else 0.0,
                    n_samples=n_rows,
                    folds=folds,
                )
            )
    return results
