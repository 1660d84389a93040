"""Optional progress bars (tqdm) for the library's long loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

TQDM_MISSING = (
    "progress bars need tqdm, which is not installed: python -m pip install "
    "'nodulebench[study]' (or tqdm), or pass progress=False"
)


def progress_bar(items: Iterable[T], *, enabled: bool, total: int, desc: str) -> Iterator[T]:
    """``items``, through a tqdm bar when ``enabled`` (bars on stderr, removed when done).

    Raises:
        ImportError: ``enabled`` but tqdm is not installed (the message says how to
            install it or to switch progress off).
    """
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(TQDM_MISSING) from error
    with tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True) as bar:
        yield from bar
