"""Launch the multi-process cases once per world size and share the results."""

from __future__ import annotations

from typing import Any

import pytest
import torch.distributed as dist


@pytest.fixture(scope="session")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``results(world_size, case)``: the per-rank results of one case."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    from _dist_cases import run_all_cases
    from _dist_launch import run_distributed

    launched: dict[int, list[dict[str, Any]]] = {}

    def results(world_size: int, case: str) -> list[Any]:
        if world_size not in launched:
            workdir = tmp_path_factory.mktemp(f"world{world_size}")
            launched[world_size] = run_distributed(run_all_cases, world_size, workdir)
        per_rank = [rank_results[case] for rank_results in launched[world_size]]
        errors = [r["error"] for r in per_rank if isinstance(r, dict) and "error" in r]
        if errors:
            pytest.fail(f"case {case!r} raised on a rank:\n{errors[0]}")
        return per_rank

    return results
