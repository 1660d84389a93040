"""Launch the multi-process cases once (3 ranks, and a 2-rank subgroup) and share them."""

from __future__ import annotations

from typing import Any

import pytest
import torch.distributed as dist


@pytest.fixture(scope="session")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``results(world_size, case)``: the per-rank results of one case."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    from _dist_cases import LAUNCH_WORLD_SIZE, run_all_cases
    from _dist_launch import run_distributed

    launched: list[dict[int, dict[str, Any]]] = []

    def results(world_size: int, case: str) -> list[Any]:
        if not launched:
            workdir = tmp_path_factory.mktemp("distributed")
            launched.extend(run_distributed(run_all_cases, LAUNCH_WORLD_SIZE, workdir))
        per_rank = [launched[rank][world_size][case] for rank in range(world_size)]
        errors = [r["error"] for r in per_rank if isinstance(r, dict) and "error" in r]
        if errors:
            pytest.fail(f"case {case!r} raised on a rank:\n{errors[0]}")
        return per_rank

    return results
