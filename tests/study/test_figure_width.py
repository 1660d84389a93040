"""Study figures stay readable at page width, however many columns or losses they show."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodulebench.stats import MeanInterval
from study.figures import MAX_WIDTH_IN, interval_figure

pytest.importorskip("matplotlib")


def test_interval_figure_wraps_many_columns_within_the_page_width(tmp_path: Path) -> None:
    from PIL import Image

    columns = [f"factor_{k}" for k in range(18)]  # as many as the sensitivity figure shows
    point = MeanInterval(mean=0.3, low=0.2, high=0.4, std=0.05, n=3, confidence=0.95)
    rows = {f"loss_{i}": dict.fromkeys(columns, point) for i in range(12)}
    interval_figure(rows, columns, "y", "title", tmp_path / "wide.png", None)
    with Image.open(tmp_path / "wide.png") as image:
        width, height = image.size
    # 110 dpi; bbox_inches="tight" may add a few pixels of padding
    assert width <= MAX_WIDTH_IN * 110 + 40
    assert height > width / 2  # the columns went onto several panels, not off the page
