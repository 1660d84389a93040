"""Optional dependencies, imported only by the functions that need them."""

from __future__ import annotations

from typing import Any


def import_pyplot() -> Any:
    """``matplotlib.pyplot``, or an :class:`ImportError` that says how to install it.

    The user's matplotlib backend is left as it is: scripts that need a headless backend
    choose it themselves (``matplotlib.use("Agg")`` or ``MPLBACKEND=Agg``).

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib, which is not installed: "
            "python -m pip install 'nodulebench[plot]'"
        ) from error
    return plt
