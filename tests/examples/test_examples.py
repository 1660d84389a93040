"""Every script in examples/ runs at its tiny size and writes what it promises."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nodulebench
import nodulebench.evaluation
import nodulebench.models
import nodulebench.plotting
import nodulebench.probing
import nodulebench.threads

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow  # each script starts its own interpreter (and torch)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODULES: set[str] = set()  # modules imported by the scripts, not run
SCRIPTS = sorted(path.stem for path in EXAMPLES.glob("*.py") if path.stem not in MODULES)
PNG = b"\x89PNG\r\n\x1a\n"
TESTS = ["iid", "decorrelated", "reversed", "heldout", "covariate"]


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def run_example(name: str, out: Path) -> str:
    return run(str(EXAMPLES / f"{name}.py"), "--tiny", "--out", str(out))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG, path


def test_there_are_at_least_six_gallery_scripts_besides_the_quickstart() -> None:
    assert len(set(SCRIPTS) - {"quickstart"}) >= 6


@pytest.mark.parametrize("name", SCRIPTS + sorted(MODULES))
def test_scripts_use_only_public_names(name: str) -> None:
    public = {
        "nodulebench": set(nodulebench.__all__),
        "nodulebench.models": set(nodulebench.models.__all__),
        "nodulebench.evaluation": set(nodulebench.evaluation.__all__),
        "nodulebench.plotting": set(nodulebench.plotting.__all__),
        "nodulebench.probing": set(nodulebench.probing.__all__),
        "nodulebench.threads": set(nodulebench.threads.__all__),
    }
    tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nodulebench"):
            assert node.module in public, node.module
            for alias in node.names:
                assert alias.name in public[node.module], (node.module, alias.name)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("nodulebench.") for a in node.names)


def test_quickstart(tmp_path: Path) -> None:
    stdout = run_example("quickstart", tmp_path)
    for name in TESTS:
        assert re.search(rf"accuracy on {name}\s+[01]\.\d{{3}}", stdout), name
    for factor in ("spiculation", "diameter_mm", "lobulation", "margin_sharpness", "texture"):
        assert re.search(
            rf"^{factor}\s+decodable: .* used: p\(malignant\) moves 0\.\d{{3}}$",
            stdout,
            re.MULTILINE,
        ), factor
    for figure in ("train_by_label", "train_by_diameter", "probes", "interventions"):
        assert_png(tmp_path / f"{figure}.png")


def test_quickstart_runs_from_a_copy_outside_the_checkout(tmp_path: Path) -> None:
    # What a user of a pip install has: the script alone, in a folder of their own, and
    # the installed package (the one under test, put on the path without the checkout).
    script = tmp_path / "my_quickstart.py"
    shutil.copy(EXAMPLES / "quickstart.py", script)
    package_root = Path(nodulebench.__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(package_root)}
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", "out"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert re.search(r"accuracy on decorrelated\s+[01]\.\d{3}", result.stdout)
    assert_png(tmp_path / "out" / "probes.png")


def test_shortcut_datasets_plant_the_promised_agreement(tmp_path: Path) -> None:
    run_example("shortcut_datasets", tmp_path)
    agreement = json.loads((tmp_path / "agreement.json").read_text())
    assert set(agreement) == {"train", *TESTS}
    # Strength s ties the shortcut to the label for (1 + s) / 2 of each class, up to the
    # rounding of exact group counts (64 samples).
    assert agreement["train"] == pytest.approx(0.95, abs=0.02)
    assert agreement["iid"] == agreement["train"]  # same spec, same seed
    assert agreement["decorrelated"] == pytest.approx(0.5, abs=0.05)
    assert agreement["reversed"] == pytest.approx(0.05, abs=0.02)
    assert agreement["heldout"] == 0.0  # malignant and small only
    assert_png(tmp_path / "distributions.png")
    assert_png(tmp_path / "samples.png")


def test_supcon_training(tmp_path: Path) -> None:
    run_example("supcon_training", tmp_path)
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert set(accuracy) == {"cross_entropy", "supcon"}
    for per_test in accuracy.values():
        assert set(per_test) == set(TESTS)
        assert all(0.0 <= value <= 1.0 for value in per_test.values())
        # Even at the tiny size both models learn: 0.65 on 128 i.i.d. test images is
        # more than 3 standard errors above chance.
        assert per_test["iid"] >= 0.65
    assert_png(tmp_path / "supcon_vs_ce.png")


def test_tiled_large_batch_agrees_with_the_dense_backend(tmp_path: Path) -> None:
    run_example("tiled_large_batch", tmp_path)
    records = json.loads((tmp_path / "memory.json").read_text())
    by_size: dict[int, dict[str, dict[str, float]]] = {}
    for record in records:
        by_size.setdefault(record["B"], {})[record["backend"]] = record
    assert sorted(by_size) == [128, 256]
    for pair in by_size.values():
        assert set(pair) == {"reference", "tiled"}
        assert pair["tiled"]["loss"] == pytest.approx(pair["reference"]["loss"], rel=1e-5)
        assert all(r["peak_MiB"] > 0 for r in pair.values())
    assert_png(tmp_path / "memory.png")


def test_probing_trained_model(tmp_path: Path) -> None:
    run_example("probing_trained_model", tmp_path)
    for table in ("probes.csv", "interventions.csv"):
        with (tmp_path / table).open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 * 5  # two models, five factors
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert [row["model"] for row in accuracy] == ["size shortcut", "no shortcut"]
    assert_png(tmp_path / "probing.png")


def test_ddp_with_two_processes_matches_one_process(tmp_path: Path) -> None:
    run(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(EXAMPLES / "ddp_supcon.py"),
        "--tiny",
        "--out",
        str(tmp_path / "two"),
    )
    run_example("ddp_supcon", tmp_path / "one")
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    assert (two["world_size"], one["world_size"]) == (2, 1)
    # The gathered loss and its gradient equal the single-process ones on the global
    # batch, so the whole training trajectory agrees up to float32 rounding.
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert_png(tmp_path / "two" / "loss.png")


def test_custom_study_writes_its_config_and_runs_the_study(tmp_path: Path) -> None:
    run_example("custom_study", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {record["loss"] for record in metrics} == {"cross_entropy", "supcon"}
    assert (tmp_path / "report.md").read_text().strip()
    assert_png(tmp_path / "figures" / "worst_group_lobulation.png")


def test_custom_study_toml_round_trips() -> None:
    spec = importlib.util.spec_from_file_location("custom_study", EXAMPLES / "custom_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    preset = module.tomllib.loads(module.PRESET.read_text())
    assert module.tomllib.loads(module.to_toml(preset)) == preset
    with pytest.raises(TypeError, match="cannot write NoneType"):
        module.toml_value(None)


def test_quickstart_page_shows_only_code_from_the_tested_script() -> None:
    page = (ROOT / "docs" / "quickstart.rst").read_text()
    script = (EXAMPLES / "quickstart.py").read_text()
    assert ".. code-block:: python" not in page and ".. code:: python" not in page
    includes = re.findall(r"\.\. literalinclude:: (\S+)\n((?:   :.*\n)+)", page)
    shown = [options for path, options in includes if path == "../examples/quickstart.py"]
    assert len(shown) >= 5
    for options in shown:
        start = re.search(r":start-after: (.*)", options)
        end = re.search(r":end-before: (.*)", options)
        assert start and end
        assert script.count(start.group(1).strip()) == 1
        assert script.count(end.group(1).strip()) == 1


def test_examples_page_shows_every_script_and_its_figures() -> None:
    page = (ROOT / "docs" / "examples.rst").read_text()
    for name in (set(SCRIPTS) | MODULES) - {"quickstart"}:
        assert f".. literalinclude:: ../examples/{name}.py" in page, name
    for image in re.findall(r"\.\. image:: (\S+)", page):
        assert (ROOT / "docs" / image).is_file(), image
