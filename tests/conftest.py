"""Shared pytest configuration: ``--device`` / ``--dtype`` options and the gpu marker."""

from __future__ import annotations

import pytest
import torch

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device the tests run on (default: cpu)")
    parser.addoption(
        "--dtype",
        default="float32",
        choices=sorted(_DTYPES),
        help="floating dtype for tests that take the dtype fixture (default: float32)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device named by ``--device``; skips when it is not available."""
    name = request.config.getoption("--device")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return dev


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating dtype named by ``--dtype``."""
    return _DTYPES[request.config.getoption("--dtype")]
