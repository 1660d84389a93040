"""The study on CT volumes end to end: a 3-D CNN, volume saliency, and a report like 2-D."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from study.models import SmallCNN3d, StudyModel
from study.store import load_npz

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reproduce_study.py"
CONFIG = Path(__file__).with_name("smoke3d.toml")
LOSSES = ["cross_entropy", "supcon", "jtt"]
TESTS = [
    "iid",
    "decorrelated",
    "reversed",
    "malignant-conflicting",
    "benign-conflicting",
    "covariate",
]


@pytest.fixture(scope="module")
def study3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke3d")
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--no-progress",
            "--config",
            str(CONFIG),
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_small_cnn3d_has_the_stages_of_small_cnn() -> None:
    model = StudyModel("small_cnn3d", width=4, projection_dim=8)
    assert isinstance(model.encoder, SmallCNN3d)
    outputs = model.encoder.stage_outputs(torch.rand(2, 1, 16, 16, 16))
    assert {name: tuple(v.shape) for name, v in outputs.items()} == {
        "stage1": (2, 4, 16, 16, 16),
        "stage2": (2, 8, 8, 8, 8),
        "stage3": (2, 16, 4, 4, 4),
        "stage4": (2, 32, 2, 2, 2),
        "pool": (2, 32),
    }
    assert model(torch.rand(3, 1, 16, 16, 16)).shape == (3, 2)


@pytest.mark.slow
def test_volume_study_writes_every_output(study3d: Path) -> None:
    records = json.loads((study3d / "metrics.json").read_text())
    assert sorted((r["loss"], r["seed"]) for r in records) == sorted(
        (loss, seed) for loss in LOSSES for seed in (0, 1)
    )
    for record in records:
        assert sorted(record["metrics"]) == sorted(TESTS)
        assert sorted(record["heads"]) == ["dfr", "linear"]
        for metrics in record["metrics"].values():
            assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
            assert metrics["worst_group_accuracy"] == min(metrics["group_accuracy"].values())
        assert {r["factor"] for r in record["probes"]} >= {"diameter_mm", "spiculation"}
        assert {r["factor"] for r in record["sensitivity"]} >= {"diameter_mm", "spiculation"}
        saliency = record["saliency"]
        assert saliency["layer"] == "encoder.stage2"
        if saliency["attributed"]:
            assert abs(sum(saliency["energy_share"].values()) - 1.0) < 1e-6
            assert abs(sum(saliency["area_share"].values()) - 1.0) < 1e-6
        arrays = load_npz(study3d / "runs" / f"{record['run_id']}.npz")
        assert arrays["saliency.maps"].shape[1:] == (1, 16, 16, 16)
        assert arrays["saliency.images"].shape == arrays["saliency.maps"].shape
        assert arrays["gram.stage2"].shape == (8, 8)
        assert np.isfinite(arrays["gram.stage2"]).all()


@pytest.mark.slow
def test_volume_study_report_has_tables_and_slice_figures(study3d: Path) -> None:
    report = (study3d / "report.md").read_text()
    for heading in (
        "## Protocol",
        "### What the numbers support",
        "**Saliency per area**",
        "**Worst-group accuracy**",
    ):
        assert heading in report, heading
    for loss in LOSSES:
        assert f"| {loss} |" in report
    figures = [
        line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")
    ]
    assert f"figures/gradcam_diameter_{LOSSES[0]}.png" in figures
    for figure in figures:
        assert (study3d / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
