"""The data guide does not drift: its factor table lists every factor."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodulebench.data import FACTORS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.rst"


@pytest.mark.skipif(not DOCS.is_file(), reason="docs are not shipped with this install")
def test_factor_table_lists_every_factor_with_its_range() -> None:
    text = DOCS.read_text()
    for name, info in FACTORS.items():
        assert f"``{name}``" in text, name
        if info.is_categorical:
            assert ", ".join(info.categories) in text, name
