"""Specs and datasets pickle, so DataLoader workers start under spawn and forkserver."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench.data import Categorical, Fixed, LabelFunction, LinearLabelRule, Split, Uniform

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.rst"


def large_and_spiculated(factors):  # type: ignore[no-untyped-def]
    return ((factors["diameter_mm"] > 12) & (factors["spiculation"] > 0.5)).long()


SPECS = {
    "default": NoduleSpec(),
    "shortcuts": NoduleSpec()
    .with_shortcut("diameter_mm", 0.9)
    .with_shortcut("calcification", -0.5),
    "shifted": NoduleSpec()
    .with_shortcut("vessels", 1.0)
    .covariate_shift(noise_hu=Uniform(60.0, 80.0)),
    "heldout": NoduleSpec().with_shortcut("diameter_mm", 0.9).heldout(),
    "marginals": NoduleSpec(
        marginals={"texture": Categorical({"solid": 1.0}), "lobulation": Fixed(0.2)}, name="custom"
    ),
    "linear rule": NoduleSpec(
        label_rule=LinearLabelRule({"diameter_mm": 1.0, "spiculation": 1.0}, 1.0),
        malignant_fraction=None,
    ),
    "function rule": NoduleSpec(
        label_rule=LabelFunction(
            large_and_spiculated, ("diameter_mm", "spiculation"), "large_and_spiculated"
        ),
        malignant_fraction=None,
    ),
    "split rule": NoduleSpec(label_rule=Split("lobulation", 0.3), label_noise=0.1),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_pickles_to_an_equal_spec(name: str) -> None:
    spec = SPECS[name]
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.fingerprint() == spec.fingerprint()
    assert copy.describe() == spec.describe()
    assert dict(copy.marginals) == dict(spec.marginals)
    with pytest.raises(TypeError):  # still read-only after the round trip
        copy.marginals["diameter_mm"] = Uniform(5.0, 6.0)  # type: ignore[index]


def test_dataset_pickles_with_identical_samples() -> None:
    ds = SyntheticNodules(SPECS["shortcuts"], n=16, seed=5, image_size=16, return_factors=True)
    copy = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(copy.render(range(16)), ds.render(range(16)), rtol=0, atol=0)
    assert torch.equal(copy.labels, ds.labels)


@pytest.mark.slow
def test_dataloader_workers_under_spawn() -> None:
    ds = SyntheticNodules(SPECS["shortcuts"], n=24, seed=2, image_size=16)
    loader = DataLoader(ds, batch_size=6, num_workers=2, multiprocessing_context="spawn")
    images, labels = zip(*loader, strict=True)
    torch.testing.assert_close(torch.cat(images), ds.render(range(24)), rtol=0, atol=0)
    assert torch.equal(torch.cat(labels), ds.labels)


@pytest.mark.slow
@pytest.mark.skipif(not DOCS.is_file(), reason="docs are not shipped with this install")
def test_data_guide_example_runs_under_spawn(tmp_path: Path) -> None:
    block = re.search(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", DOCS.read_text())
    assert block is not None
    example = textwrap.indent(textwrap.dedent(block.group(1)), "    ")
    script = tmp_path / "guide.py"
    script.write_text(
        "import torch.multiprocessing\n\n"
        "def main():\n"
        f"{example}\n"
        "    images, labels = next(iter(loader))\n"
        "    print(tuple(images.shape), tuple(labels.shape), loader.num_workers)\n\n"
        "if __name__ == '__main__':\n"
        "    torch.multiprocessing.set_start_method('spawn')\n"
        "    main()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "(256, 1, 64, 64) (256,) 2"
