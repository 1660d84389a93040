"""Progress bars (tqdm, from the ``study`` extra) that can be switched off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _SilentBar:
    def update(self, n: int = 1) -> None:
        """Ignore progress."""


class Progress:
    """Hands out progress bars: an overall one at position 0, one per run below it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

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
