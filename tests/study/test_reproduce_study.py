"""The main job end to end: the smoke preset, its report, resuming, and bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reproduce_study.py"
STUDY_LOSSES = [
    "cross_entropy",
    "cross_entropy_2view",
    "supcon",
    "supcon_ce",
    "contrastive",
    "triplet",
    "multi_similarity",
    "ntxent",
    "group_dro",
    "group_dro_inferred",
    "jtt",
    "cnc",
]
EXPERIMENTS = {"control", "diameter", "calcification", "acquisition"}
GROUPS = {"benign-aligned", "benign-conflicting", "malignant-aligned", "malignant-conflicting"}
TESTS = [
    "iid",
    "decorrelated",
    "reversed",
    "malignant-conflicting",
    "benign-conflicting",
    "covariate",
]
CONTROL_TESTS = ["decorrelated", "covariate"]  # iid = decorrelated = reversed, drawn once
FACTORS = {"diameter_mm", "calcification", "site"}


def run_study(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-progress", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"study failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    run_study("--preset", "smoke", "--out", str(out), "--threads", "2", "--workers", "2")
    return out


@pytest.mark.slow
def test_smoke_writes_every_output(smoke: Path) -> None:
    records = json.loads((smoke / "metrics.json").read_text())
    assert sorted(r["loss"] for r in records if r["experiment"] == "diameter") == sorted(
        STUDY_LOSSES
    )
    assert {r["experiment"] for r in records} == EXPERIMENTS
    for record in records:
        tests = CONTROL_TESTS if record["experiment"] == "control" else TESTS
        assert sorted(record["metrics"]) == sorted(tests)
        assert sorted(record["heads"]) == ["dfr", "linear"]
        for head in (record["metrics"], *record["heads"].values()):
            for test, metrics in head.items():
                assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
                assert 0.0 <= metrics["ece"] <= 1.0
                groups = metrics["group_accuracy"]
                assert set(groups) == ({test} if test.endswith("-conflicting") else GROUPS)
                assert set(metrics["by_factor"]) == FACTORS
                assert metrics["worst_group_accuracy"] == min(groups.values())
                assert sum(metrics["group_counts"].values()) == metrics["n"]
        assert {r["factor"] for r in record["probes"]} >= {"diameter_mm", "spiculation"}
        assert {r["factor"] for r in record["sensitivity"]} >= {"diameter_mm", "spiculation"}
        saliency = record["saliency"]
        assert saliency["layer"] == "encoder.stage3"
        if saliency["attributed"]:
            assert abs(sum(saliency["energy_share"].values()) - 1.0) < 1e-6
            assert abs(sum(saliency["area_share"].values()) - 1.0) < 1e-6
    with (smoke / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert {f"{t}.worst_group_accuracy" for t in TESTS} <= set(rows[0])
    assert {f"decorrelated.group.{g}" for g in GROUPS} <= set(rows[0])
    assert "dfr.decorrelated.worst_group_accuracy" in rows[0]
    assert (smoke / "study.log").read_text().count("done ") == len(records)
    mode = (smoke / "metrics.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.slow
def test_smoke_report_has_tables_figures_and_findings(smoke: Path) -> None:
    report = (smoke / "report.md").read_text()
    for heading in (
        "## Protocol",
        "### What the numbers support",
        "### Generalization",
        "### Which features each loss learned",
        "not public",
        "**Worst-group accuracy**, protocol's head (mean [95 % interval]",
        "**Accuracy per group**",
        "DFR head",
        "minus the seed-to-seed floor",
        "**Saliency per area**",
        "no-shortcut control",
    ):
        assert heading in report, heading
    assert "±" not in report
    for loss in STUDY_LOSSES:
        assert f"| {loss} |" in report
    assert "| loss | " + " | ".join(TESTS) + " |" in report
    figures = [
        line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")
    ]
    assert len(figures) >= len(EXPERIMENTS) * (5 + len(STUDY_LOSSES))
    for figure in figures:
        path = smoke / figure
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_identically(smoke: Path) -> None:
    before = json.loads((smoke / "metrics.json").read_text())
    victim = smoke / "runs" / "calcification__supcon__seed0.json"
    victim.unlink()  # as if the process had been killed during that run
    # One process with one thread: the same arithmetic as each of the two workers.
    result = run_study("--preset", "smoke", "--out", str(smoke), "--threads", "1")
    assert result.stderr.count("skip ") == len(before) - 1
    after = json.loads((smoke / "metrics.json").read_text())
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        assert old["run_id"] == new["run_id"]
        assert old["metrics"] == new["metrics"], old["run_id"]
        assert old["heads"] == new["heads"], old["run_id"]
        assert old["loss_history"] == new["loss_history"], old["run_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "unknown preset 'huge'; accepted: smoke, quick, quick3d, full"),
        (["--preset", "smoke", "--losses", "hinge"], "unknown loss 'hinge'; accepted:"),
        (["--preset", "smoke", "--device", "tpu"], "device 'tpu'"),
        (["--preset", "smoke", "--seeds", "-1"], "--seeds must be integers >= 0"),
        (["--preset", "smoke", "--seeds", "1", "1"], "--seeds must not repeat a seed"),
        (["--preset", "smoke", "--workers", "0"], "--workers must be >= 1"),
        (["--preset", "smoke", "--losses", "supcom"], "(did you mean 'supcon'?)"),
        (["--preset", "smoke", "--shard", "3/2"], "--shard must be K/N with integers 1 <= K <= N"),
        (["--preset", "smoke", "--shard", "1/2", "--fresh"], "--fresh cannot be combined"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_study(*args, "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_config_with_unknown_key_is_rejected(tmp_path: Path) -> None:
    preset = (ROOT / "benchmarks" / "study" / "presets" / "smoke.toml").read_text()
    config = tmp_path / "mine.toml"
    config.write_text(preset.replace("[train]\n", "[train]\nepoch = 3\n"))
    result = run_study("--config", str(config), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "unknown key(s) epoch in [train]; accepted: epochs, batch_size" in result.stderr
    assert "(did you mean 'epochs'?)" in result.stderr


def test_unwritable_output_folder_is_rejected(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_study("--preset", "smoke", "--out", str(blocker / "out"), check=False)
    assert result.returncode == 2
    assert "cannot write to the output folder" in result.stderr


def test_output_folder_of_another_config_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"data": {"n_train": 1}}))
    result = run_study("--preset", "smoke", "--out", str(out), check=False)
    assert result.returncode == 2
    assert "holds results of a different configuration; pass --fresh" in result.stderr


@pytest.mark.slow
def test_study_runs_under_torchrun_on_two_processes(tmp_path: Path) -> None:
    config = Path(__file__).with_name("crash.toml")  # two losses, one experiment
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            "--config",
            str(config),
            "--out",
            str(out),
            "--no-progress",
            "--seeds",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = json.loads((out / "metrics.json").read_text())
    assert [r["loss"] for r in records] == ["cross_entropy", "supcon"]
    assert "2 process(es)" in (out / "study.log").read_text()
    assert (out / "report.md").exists()
