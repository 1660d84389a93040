"""The study's progress bars: a clear error without tqdm, log lines above the bars."""

from __future__ import annotations

import logging
import sys

import pytest

from study.progress import Progress


def test_without_tqdm_the_study_says_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    Progress(enabled=False)  # fine without tqdm
    with pytest.raises(ImportError, match=r"install the study extra .* or pass --no-progress"):
        Progress(enabled=True)


def test_log_lines_go_through_tqdm_while_bars_show(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    logger = logging.getLogger("study.test_progress")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    progress = Progress(enabled=True)
    try:
        with progress.logging_through_bars(logger):
            assert handler not in logger.handlers  # replaced by tqdm's own handler
            with progress.bar(total=2, desc="run", position=0) as bar:
                logger.info("a line above the bar")
                bar.update(1)
        assert handler in logger.handlers  # restored afterwards
    finally:
        logger.removeHandler(handler)
    assert "a line above the bar" in capsys.readouterr().err
