"""project_embeddings against an eigendecomposition; records and the CSV/JSON writer."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from nodulebench.probing import (
    EmbeddingProjection,
    ProbeResult,
    SensitivityResult,
    project_embeddings,
    write_records,
)


def _features(n: int = 60, d: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])[:d]
    return torch.randn(n, d, generator=g) * scales + 2.0


def test_matches_covariance_eigendecomposition() -> None:
    x = _features()
    p = project_embeddings(x, dim=3)
    data = x.double().numpy()
    centered = data - data.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered)
    order = np.argsort(eigenvalues)[::-1][:3]
    expected_ratio = eigenvalues[order] / eigenvalues.sum()
    np.testing.assert_allclose(p.explained_variance_ratio.numpy(), expected_ratio, rtol=1e-10)
    for k in range(3):
        vector = eigenvectors[:, order[k]]
        vector = vector * np.sign(vector[np.argmax(np.abs(vector))])  # the documented sign
        np.testing.assert_allclose(p.components[k].numpy(), vector, atol=1e-10)
        np.testing.assert_allclose(p.coordinates[:, k].numpy(), centered @ vector, atol=1e-9)
    torch.testing.assert_close(p.transform(x), p.coordinates)
    assert isinstance(p, EmbeddingProjection)


def test_sign_convention_is_deterministic_under_negation_of_rows_order() -> None:
    x = _features()
    a, b = project_embeddings(x), project_embeddings(x.flip(0))
    torch.testing.assert_close(a.components, b.components)
    torch.testing.assert_close(a.coordinates, b.coordinates.flip(0))


@pytest.mark.parametrize(
    ("features", "dim", "exc", "fragment"),
    [
        (torch.rand(10, 3), 4, ValueError, "dim must be <= min(N, D) = 3; got 4"),
        (torch.rand(10, 3), 0, ValueError, "dim must be an int >= 1; got 0"),
        (torch.ones(10, 3), 2, ValueError, "zero variance"),
        (torch.rand(10), 1, ValueError, "features must have shape (N, D)"),
        (torch.ones(10, 3, dtype=torch.long), 1, TypeError, "floating-point"),
        (torch.full((10, 3), float("inf")), 1, ValueError, "finite"),
    ],
)
def test_projection_bad_input(features, dim, exc, fragment) -> None:
    with pytest.raises(exc, match=re.escape(fragment)):
        project_embeddings(features, dim)


def _records():
    probe = ProbeResult(
        "fc", "diameter_mm", "continuous", "r2", 0.9, 0.01, -0.02, 0.01, 0.92, 0.0, 100, 5
    )
    sensitivity = SensitivityResult(
        "calcification",
        "categorical",
        (0.0, 1.0, 2.0),
        "categories",
        64,
        3,
        0.1,
        0.05,
        -0.01,
        None,
        None,
    )
    return probe, sensitivity


def test_write_json_round_trips(tmp_path) -> None:
    probe, sensitivity = _records()
    path = write_records([probe, sensitivity], tmp_path / "sub" / "out.json")
    loaded = json.loads(path.read_text())
    assert loaded[0] == probe.to_dict()
    assert loaded[1]["values"] == [0.0, 1.0, 2.0] and loaded[1]["embedding_displacement"] is None


def test_write_csv_union_of_columns(tmp_path) -> None:
    probe, sensitivity = _records()
    path = write_records([probe, sensitivity, {"extra": 1}], tmp_path / "out.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert rows[0]["factor"] == "diameter_mm" and float(rows[0]["score"]) == 0.9
    assert json.loads(rows[1]["values"]) == [0.0, 1.0, 2.0]
    assert rows[1]["embedding_displacement"] == "" and rows[2]["extra"] == "1"
    assert rows[2]["factor"] == ""


def test_writer_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"path must end in '.csv' or '.json'"):
        write_records([], tmp_path / "out.txt")
    with pytest.raises(TypeError, match=r"records\[0\] must be a dict or have a to_dict"):
        write_records([3], tmp_path / "out.csv")
