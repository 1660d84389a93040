"""The data docs do not drift: docstring examples run, the factor table lists every factor."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from nodulebench.data import FACTORS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.rst"


@pytest.mark.parametrize("module", ["nodulebench.data.dataset", "nodulebench.data.spec",
                                    "nodulebench.data.measure", "nodulebench.data.measure3d"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(not DOCS.is_file(), reason="docs are not shipped with this install")
def test_factor_table_lists_every_factor_with_its_range() -> None:
    text = DOCS.read_text()
    for name, info in FACTORS.items():
        assert f"``{name}``" in text, name
        if info.is_categorical:
            assert ", ".join(info.categories) in text, name
