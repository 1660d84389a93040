r"""Cross-validated linear probes: which factors can be read linearly from features.

A probe that scores high says a factor is *decodable*; it does not say the model uses it
(see :func:`~nodulebench.probing.intervention_sensitivity` for that). Each probe is
paired with a control, the same probe trained and scored on shuffled targets, so a
score is read against what a probe of that capacity fits by chance.

Everything runs in float64 with torch and numpy; no scikit-learn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch

from nodulebench._progress import progress_bar
from nodulebench._validation import check_int, check_ndim, check_positive
from nodulebench.probing.records import ProbeResult
from nodulebench.threads import thread_limit

__all__ = ["probe_factors"]

# Ridge penalties tried on each training split, relative to its size n: alpha = n * c.
# With standardized features, c is the penalty per sample, independent of n.
log = logging.getLogger(__name__)

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


def _standardization(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the training rows; a constant feature gets std 1."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class _RidgeSplit:
    """One training split's SVD, shared by every continuous target with these folds.

    For centered data ``Z = U S V^T`` the fit with penalty ``alpha`` is
    ``w = V diag(s / (s^2 + alpha)) U^T y`` and its hat matrix has diagonal
    ``h_i = 1/n + sum_k U_ik^2 s_k^2 / (s_k^2 + alpha)``; the leave-one-out residual is
    ``r_i / (1 - h_i)``, so every penalty is scored from one SVD.
    """

    def __init__(self, x_train: torch.Tensor) -> None:
        self.u, self.s, self.vh = torch.linalg.svd(x_train, full_matrices=False)
        self.n = x_train.shape[0]

    def predict(self, y_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
        """Ridge predictions on ``x_test``, the penalty chosen by exact leave-one-out error."""
        u, s, n = self.u, self.s, self.n
        y_mean = y_train.mean()
        yc = y_train - y_mean
        uty = u.T @ yc
        best: tuple[float, torch.Tensor] | None = None
        for penalty in _RIDGE_PENALTIES:
            shrink = s**2 / (s**2 + n * penalty)
            residual = yc - u @ (shrink * uty)
            leverage = (u**2) @ shrink + 1.0 / n
            loo = float(((residual / (1.0 - leverage).clamp_min(1e-12)) ** 2).mean())
            if best is None or loo < best[0]:
                coef = self.vh.T @ (s / (s**2 + n * penalty) * uty)
                best = (loo, coef)
        assert best is not None  # the penalty grid is not empty
        return x_test @ best[1] + y_mean


def _logistic_objective(
    x: torch.Tensor,
    onehot: torch.Tensor,
    row_weight: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    l2: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed objectives of ``P`` independent logistic problems and their exact gradients.

    Problem ``p`` reads the features standardized by its own training rows,
    ``Z_p = (x - mean_p) / std_p``, and minimizes
    ``-sum_i row_weight_ip log softmax(Z_pi W_p + b_p)[y_ip] + (l2 / 2) ||W_p||_F^2``
    (``row_weight`` is ``1 / n_p`` on its training rows, 0 elsewhere). ``Z_p`` is never
    formed: ``Z_p W_p = x (W_p / std_p) - (mean_p / std_p) W_p``, and
    ``Z_p^T R = (x^T R - mean_p 1^T R) / std_p``, so every problem shares one matrix
    product with ``x``. Written out because autograd's per-call overhead dominates on
    these small problems.

    Shapes: ``x`` ``(N, D)``; ``onehot`` ``(N, P, K)``; ``row_weight`` ``(N, P)``;
    ``mean``, ``std`` ``(D, P)``; ``weight`` ``(D, P, K)``; ``bias`` ``(P, K)``.
    Returns ``(loss, dW, db)``.
    """
    log_p = torch.log_softmax(_logits(x, mean, std, weight, bias), dim=2)
    loss = -(row_weight.unsqueeze(2) * onehot * log_p).sum() + 0.5 * l2 * (weight**2).sum()
    residual = row_weight.unsqueeze(2) * (log_p.exp() - onehot)
    d_bias = residual.sum(dim=0)
    x_residual = (x.T @ residual.flatten(1)).view_as(weight)
    d_weight = (x_residual - mean.unsqueeze(2) * d_bias) / std.unsqueeze(2)
    return loss, d_weight + l2 * weight, d_bias


def _logits(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``(N, P, K)`` logits of every problem on the standardized features (see above)."""
    scaled = weight / std.unsqueeze(2)
    offset = bias - (mean.unsqueeze(2) * scaled).sum(dim=0)
    return (x @ scaled.flatten(1)).view(x.shape[0], *bias.shape) + offset


def _preconditioner(
    x: torch.Tensor, row_weight: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, l2: float
) -> torch.Tensor:
    """``(P, D, D)`` Cholesky factors ``L_p`` of ``C_p / 2 + l2 I``.

    ``C_p = Z_p^T diag(row_weight_p) Z_p`` is the correlation matrix of problem ``p``'s
    standardized training rows. ``C_p / 2`` bounds the curvature of the mean
    cross-entropy in ``W_p`` (Boehning's bound), so in the variables ``V_p = L_p^T W_p``
    the objective's Hessian is at most the identity, and the curvature that correlated
    features concentrate in a few directions is spread evenly over all of them.
    """
    second = torch.einsum("np,nd,ne->pde", row_weight, x, x)
    m, s = mean.T, std.T
    correlation = (second - m[:, :, None] * m[:, None, :]) / (s[:, :, None] * s[:, None, :])
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    factors: torch.Tensor = torch.linalg.cholesky(0.5 * correlation + l2 * eye)
    return factors


def _logistic_predict(
    x: torch.Tensor,
    codes: torch.Tensor,
    train: torch.Tensor,
    n_classes: int,
    l2: float,
) -> torch.Tensor:
    """Multinomial logistic regressions by L-BFGS; the predicted class of every row.

    Problem ``p`` fits codes ``codes[p]`` on the rows ``train[p]`` of ``x`` (on the CPU),
    standardized by those rows, and minimizes ``mean cross-entropy + (l2 / 2) *
    ||W||_F^2`` (the intercept is not penalized), from zeros, with scipy's L-BFGS-B:
    deterministic. The problems are independent and their objectives add, so one L-BFGS
    over all of them (every fold, probe and control) finds each one's minimum at a
    fraction of the per-call overhead of separate fits. It runs in the preconditioned
    variables of :func:`_preconditioner`: the same minimum, reached in several times
    fewer steps on the correlated features of a network.

    Shapes: ``x`` ``(N, D)``; ``codes``, ``train`` ``(P, N)``. Returns ``(P, N)`` codes.
    """
    from scipy.optimize import minimize

    problems, d = codes.shape[0], x.shape[1]
    stats = [_standardization(x[rows]) for rows in train]
    mean = torch.stack([m for m, _ in stats], dim=1)
    std = torch.stack([s for _, s in stats], dim=1)
    rows = train.T.to(torch.float64)
    row_weight = rows / rows.sum(dim=0)
    onehot = torch.nn.functional.one_hot(codes.T, n_classes).to(torch.float64)
    chol = _preconditioner(x, row_weight, mean, std, l2)
    n_weight = d * problems * n_classes

    def unpack(theta: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``W`` ``(D, P, K)`` and ``b`` ``(P, K)`` from the optimizer's ``(V, b)``."""
        flat = torch.from_numpy(theta)
        v = flat[:n_weight].view(problems, d, n_classes)
        weight = torch.linalg.solve_triangular(chol.mT, v, upper=True)  # W_p = L_p^-T V_p
        return weight.permute(1, 0, 2), flat[n_weight:].view(problems, n_classes)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, d_weight, d_bias = _logistic_objective(
            x, onehot, row_weight, mean, std, *unpack(theta), l2
        )
        d_v = torch.linalg.solve_triangular(chol, d_weight.permute(1, 0, 2), upper=False)
        return float(loss), torch.cat([d_v.flatten(), d_bias.flatten()]).numpy()

    start = np.zeros(n_weight + problems * n_classes)
    fit = minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 100 * problems, "maxcor": 20, "gtol": 1e-7, "ftol": 1e-14},
    )
    weight, bias = unpack(fit.x)
    return _logits(x, mean, std, weight, bias).argmax(dim=2).T


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


class _RidgeCache:
    """Standardized splits and their SVDs, keyed by fold assignment.

    Unstratified folds depend on the seed only, so every continuous factor of a layer
    (and every control) shares them: one SVD per fold instead of one per factor.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.splits: dict[bytes, list[tuple[_RidgeSplit, torch.Tensor, torch.Tensor]]] = {}

    def folds(self, ids: np.ndarray) -> list[tuple[_RidgeSplit, torch.Tensor, torch.Tensor]]:
        """``(split, x_test, test mask)`` of every fold of ``ids``."""
        key = ids.tobytes()
        if key not in self.splits:
            entries = []
            for fold in range(int(ids.max()) + 1):
                test = torch.from_numpy(ids == fold)
                mean, std = _standardization(self.x[~test])
                entries.append(
                    (_RidgeSplit((self.x[~test] - mean) / std), (self.x[test] - mean) / std, test)
                )
            self.splits[key] = entries
        return self.splits[key]


def _ridge_scores(
    cache: _RidgeCache, target: np.ndarray, ids: np.ndarray, factor: str
) -> list[float]:
    y = torch.from_numpy(target.astype(np.float64))
    return [
        _r2(y[test], split.predict(y[~test], x_test), factor)
        for split, x_test, test in cache.folds(ids)
    ]


def _logistic_scores(
    x: torch.Tensor, targets: list[np.ndarray], fold_ids: list[np.ndarray], l2: float
) -> list[list[float]]:
    """Balanced accuracy of every fold of every target, all fitted in one L-BFGS."""
    codes, train, tests = [], [], []
    n_classes = 0
    for target, ids in zip(targets, fold_ids, strict=True):
        _, inverse = np.unique(target, return_inverse=True)
        y = torch.from_numpy(inverse.astype(np.int64))
        n_classes = max(n_classes, int(inverse.max()) + 1)
        for fold in range(int(ids.max()) + 1):
            test = torch.from_numpy(ids == fold)
            codes.append(y)
            train.append(~test)
            tests.append(test)
    predicted = _logistic_predict(x, torch.stack(codes), torch.stack(train), n_classes, l2)
    scores = [
        _balanced_accuracy(y[test], row[test])
        for y, row, test in zip(codes, predicted, tests, strict=True)
    ]
    per_target = len(scores) // len(targets)
    return [scores[k * per_target : (k + 1) * per_target] for k in range(len(targets))]


def probe_factors(
    features: torch.Tensor | Mapping[str, torch.Tensor],
    factors: Mapping[str, torch.Tensor],
    *,
    folds: int = 5,
    seed: int = 0,
    logistic_l2: float = 1e-2,
    progress: bool = False,
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
        progress: show a progress bar over the (feature set, factor) probes (needs
            tqdm, e.g. from the ``study`` extra). The ``"nodulebench"`` logger reports
            start and duration at INFO level either way.

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
                raise ValueError(f"factors[{name!r}] is constant ({target[0]!r}); nothing to probe")
        targets[name] = (target, categorical)

    results = []
    start = time.perf_counter()
    log.info(
        "probing %d factor(s) in %d feature set(s) of %d samples, %d folds",
        len(targets),
        len(matrices),
        n_rows,
        folds,
    )
    pairs = [(layer, name) for layer in matrices for name in targets]
    ridges: dict[str, _RidgeCache] = {}
    with thread_limit(1):  # thousands of tiny solves: extra threads only wait (see there)
        for layer, name in progress_bar(pairs, enabled=progress, total=len(pairs), desc="probes"):
            results.append(
                _probe_one(
                    matrices[layer],
                    layer,
                    name,
                    targets[name],
                    ridges,
                    folds,
                    seed,
                    logistic_l2,
                    n_rows,
                )
            )
    log.info("probes done in %.1f s", time.perf_counter() - start)
    return results


def _probe_one(
    x: torch.Tensor,
    layer: str,
    name: str,
    target_kind: tuple[np.ndarray, bool],
    ridges: dict[str, _RidgeCache],
    folds: int,
    seed: int,
    logistic_l2: float,
    n_rows: int,
) -> ProbeResult:
    """One (feature set, factor) probe and its shuffled control."""
    if layer not in ridges:
        ridges[layer] = _RidgeCache(x)
    ridge = ridges[layer]
    target, categorical = target_kind
    probe_rng, control_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    probe_ids = _fold_ids(target, folds, categorical, probe_rng)
    shuffled = target[control_rng.permutation(n_rows)]
    control_ids = _fold_ids(shuffled, folds, categorical, control_rng)
    if categorical:
        scores, controls = _logistic_scores(
            x, [target, shuffled], [probe_ids, control_ids], logistic_l2
        )
    else:
        scores = _ridge_scores(ridge, target, probe_ids, name)
        controls = _ridge_scores(ridge, shuffled, control_ids, name)
    score, control = float(np.mean(scores)), float(np.mean(controls))
    return ProbeResult(
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
