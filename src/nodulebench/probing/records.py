"""Plain result records for the probing utilities, and a writer to CSV / JSON.

Every probing function returns frozen dataclasses whose fields are plain Python values
(``str``, ``int``, ``float``, ``tuple``, ``None``), so ``record.to_dict()`` feeds straight
into :mod:`json`, :mod:`csv` or a data-frame constructor, and :func:`write_records`
writes a list of them in one call.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ProbeResult", "SensitivityResult", "write_records"]


@dataclasses.dataclass(frozen=True)
class _Record:
    def to_dict(self) -> dict[str, Any]:
        """The record as a ``dict`` of plain values, fields in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class ProbeResult(_Record):
    """One cross-validated linear probe of one factor from one feature set.

    Attributes:
        layer: Name of the feature set (the layer the features came from).
        factor: Name of the probed factor.
        kind: ``"continuous"`` (ridge regression) or ``"categorical"`` (multinomial
            logistic regression).
        metric: ``"r2"`` for continuous factors, ``"balanced_accuracy"`` for categorical.
        score: Mean of the metric over the held-out folds.
        score_std: Standard deviation of the metric over the folds (population, ``ddof=0``).
        control: The same probe, same folds, trained and scored on shuffled targets.
        control_std: Standard deviation of the control over the folds.
        selectivity: ``score - control``: what the features tell beyond what a probe of
            this capacity fits by chance.
        chance: The metric's chance level: ``0`` for R^2, ``1 / n_classes`` for
            balanced accuracy.
        n_samples: Number of samples probed.
        folds: Number of cross-validation folds.
    """

    layer: str
    factor: str
    kind: str
    metric: str
    score: float
    score_std: float
    control: float
    control_std: float
    selectivity: float
    chance: float
    n_samples: int
    folds: int


@dataclasses.dataclass(frozen=True)
class SensitivityResult(_Record):
    """How much a model's output moves when one generative factor alone is changed.

    Attributes:
        factor: Name of the factor that was intervened on.
        kind: ``"continuous"`` or ``"categorical"``.
        values: The values the factor was moved between (two for a continuous factor;
            the category codes for a categorical one, every pair of them was used).
        values_from: ``"percentiles"`` (the dataset's 10th and 90th percentiles),
            ``"categories"`` (the categories present in the dataset) or ``"user"``.
        n_samples: Number of samples each counterfactual pair was rendered for.
        n_pairs: Number of value pairs (1 for a continuous factor).
        flip_rate: Share of counterfactual pairs whose predicted class differs.
        mean_abs_probability_change: Mean of ``|p(b) - p(a)|`` for the malignant
            probability ``p``.
        mean_probability_change: Mean of ``p(b) - p(a)``, the signed effect of moving
            from the first value of a pair to the second.
        embedding_displacement: Mean Euclidean distance between the two embeddings of a
            pair, or ``None`` when no embedding layer was given.
        relative_embedding_displacement: ``embedding_displacement`` divided by the
            root-mean-square distance between two factual embeddings of the sample, so
            models with different embedding scales compare; ``None`` without embedding.
    """

    factor: str
    kind: str
    values: tuple[float, ...]
    values_from: str
    n_samples: int
    n_pairs: int
    flip_rate: float
    mean_abs_probability_change: float
    mean_probability_change: float
    embedding_displacement: float | None
    relative_embedding_displacement: float | None


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    return value


def write_records(records: Sequence[Any], path: str | Path) -> Path:
    """Write records (objects with ``to_dict()``, or dicts) to a CSV or JSON file.

    The format follows the suffix: ``.csv`` writes one row per record with the union of
    the fields as columns (tuples as JSON lists, ``None`` as an empty cell); ``.json``
    writes a list of objects.

    Args:
        records: The records, e.g. the list returned by
            :func:`~nodulebench.probing.probe_factors`.
        path: Destination; parent folders are created.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ValueError: If the suffix is neither ``.csv`` nor ``.json``.
        TypeError: If a record is neither a dict nor has a ``to_dict()`` method.

    Example:
        >>> import tempfile, pathlib
        >>> from nodulebench.probing import ProbeResult, write_records
        >>> r = ProbeResult("fc", "diameter_mm", "continuous", "r2", 0.9, 0.01,
        ...                 -0.02, 0.01, 0.92, 0.0, 100, 5)
        >>> out = write_records([r], pathlib.Path(tempfile.mkdtemp()) / "probes.csv")
        >>> out.read_text().splitlines()[0].split(",")[:3]
        ['layer', 'factor', 'kind']
    """
    destination = Path(path)
    suffix = destination.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"path must end in '.csv' or '.json'; got {str(destination)!r}")
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if isinstance(record, dict):
            rows.append(dict(record))
        elif callable(getattr(record, "to_dict", None)):
            rows.append(record.to_dict())
        else:
            raise TypeError(
                f"records[{i}] must be a dict or have a to_dict() method; "
                f"got {type(record).__name__}"
            )
    destination.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        destination.write_text(json.dumps(rows, indent=2) + "\n")
        return destination
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with destination.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return destination
