"""Progress bars (tqdm, from the ``study`` extra) that can be switched off.

While bars are shown, log lines to the console go through tqdm (its logging redirect), so
that a line is printed above the bars instead of through them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TQDM_MISSING = (
    "progress bars need tqdm, which is not installed: install the study extra "
    "(python -m pip install 'nodulebench[study]') or pass --no-progress"
)


class _SilentBar:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""


class Progress:
    """Hands out progress bars: an overall one at position 0, one per run below it.

    Raises:
        ImportError: bars are enabled but tqdm is not installed (the message says how to
            install it, or to pass ``--no-progress``).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            try:
                import tqdm  # noqa: F401
            except ImportError as error:
                raise ImportError(TQDM_MISSING) from error

    @contextmanager
    def bar(self, *, total: int, desc: str, position: int = 1) -> Iterator[Any]:
        """A tqdm bar, or a silent stand-in when progress is switched off."""
        if not self.enabled:
            yield _SilentBar()
            return
        from tqdm.auto import tqdm

        with tqdm(
            total=total, desc=desc, position=position, leave=position == 0, dynamic_ncols=True
        ) as bar:
            yield bar

    @contextmanager
    def logging_through_bars(self, *loggers: logging.Logger) -> Iterator[None]:
        """While inside, console handlers of ``loggers`` write through tqdm (files untouched)."""
        if not self.enabled:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=list(loggers)):
            yield
