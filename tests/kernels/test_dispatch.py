"""Backend selection: declared capabilities, "auto" rules and the reasons for refusals."""

from __future__ import annotations

import pytest
import torch

from nodulebench.kernels import dispatch
from nodulebench.kernels.dispatch import (
    BACKENDS,
    KERNEL_LOSSES,
    TILED_CROSSOVER,
    TWO_TOWER_LOSSES,
    get_backend_info,
    run_per_anchor,
    select_backend,
)


def test_every_backend_declares_tolerances_for_its_dtypes() -> None:
    for info in BACKENDS.values():
        assert set(info.dtypes) <= set(info.tolerances) | {torch.float64}
        assert set(info.options) <= set(KERNEL_LOSSES + TWO_TOWER_LOSSES)
        assert info.summary


def test_tiled_serves_every_loss_but_semihard_and_pml_contrastive_on_cpu() -> None:
    z = torch.randn(8, 4)
    assert set(BACKENDS["tiled"].options) == (
        set(KERNEL_LOSSES + TWO_TOWER_LOSSES) - {"triplet_semihard", "contrastive_pml"}
    )
    for loss in BACKENDS["tiled"].options:
        assert select_backend(loss, "tiled", z) == "tiled"


def test_semihard_triplets_are_served_by_the_reference_only() -> None:
    big = torch.randn(4096, 4)
    assert select_backend("triplet_semihard", "auto", big) == "reference"
    with pytest.raises(ValueError, match=r"backend='tiled' cannot compute 'triplet_semihard'"):
        select_backend("triplet_semihard", "tiled", big)


def test_auto_picks_tiled_from_the_crossover_on_cpu() -> None:
    assert set(TILED_CROSSOVER) == set(BACKENDS["tiled"].options)
    for loss in TILED_CROSSOVER:
        big = torch.randn(TILED_CROSSOVER[loss], 4)
        assert select_backend(loss, "auto", big) == "tiled"


def test_auto_below_crossover_prefers_reference_when_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = torch.randn(4, 4)
    reference = BACKENDS["reference"]
    monkeypatch.setattr(type(reference), "why_not", lambda self, loss, z, options: None)
    assert select_backend("supcon", "auto", small) == "reference"


def test_auto_never_picks_triton_on_cpu() -> None:
    assert select_backend("supcon", "auto", torch.randn(4096, 4)) != "triton"


@pytest.mark.parametrize(
    ("backend", "loss", "z", "options", "match"),
    [
        ("triton", "supcon", torch.randn(4, 4), {}, r"backend='triton' .* devices"),
        ("triton", "contrastive", torch.randn(4, 4), {}, r"implements only 'supcon'"),
        ("tiled", "supcon", torch.randn(4, 4).half(), {}, r"backend='tiled' .* dtypes"),
        ("tiled", "supcon", torch.randn(4, 4), {"variant": "both"}, r"variant in"),
        ("tiled", "triplet_hard", torch.randn(4, 4), {"distance": "l1"}, r"distance in"),
        ("reference", "supcon", torch.randn(4, 4).bfloat16(), {}, r"backend='reference'"),
    ],
)
def test_forced_backend_that_cannot_serve_says_why(
    backend: str, loss: str, z: torch.Tensor, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        select_backend(loss, backend, z, **options)


def test_triton_reasons_include_dimension_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    info = get_backend_info("triton")
    assert info.max_dim is not None
    reason = info.why_not("supcon", torch.randn(4, info.max_dim + 1), {})
    assert reason is not None and "D <=" in reason


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        select_backend("arcface", "auto", torch.randn(4, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend("supcon", "cuda", torch.randn(4, 4))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        select_backend("supcon", "auto", [[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend_info("dense")


def test_missing_module_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_module_available", lambda name: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="'triton' it needs is not available"):
        select_backend("supcon", "triton", torch.randn(4, 4))


def test_kernels_are_plain_references_not_names() -> None:
    # The dispatcher imports its backends: every kernel is a function object.
    for name in ("reference", "tiled"):
        info = BACKENDS[name]
        assert set(info.load()) == set(info.options)
        assert all(callable(fn) for fn in info.load().values())


def test_reference_sets_are_served_by_the_reference_and_tiled_backends() -> None:
    z, ref = torch.randn(3, 4), torch.randn(5, 4)
    reference = (ref, torch.arange(5) % 2)
    assert select_backend("supcon", "auto", z, reference=reference) == "reference"
    assert select_backend("supcon", "tiled", z, reference=reference) == "tiled"
    # "auto" weighs anchors x reference rows against the crossover's square.
    bank = (torch.randn(4096, 4), torch.arange(4096) % 2)
    assert select_backend("supcon", "auto", torch.randn(256, 4), reference=bank) == "tiled"
    assert select_backend("supcon", "auto", torch.randn(255, 4), reference=bank) == "reference"
    with pytest.raises(ValueError, match=r"backend='triton' .* a reference set"):
        select_backend("supcon", "triton", z, reference=reference)


def test_run_per_anchor_calls_the_selected_kernel() -> None:
    z = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    labels = torch.arange(10) % 3
    loss, valid = run_per_anchor("supcon", z, labels, backend="tiled", temperature=0.5)
    assert loss.shape == (10,) and valid.all()
    total, count, valid = run_per_anchor("triplet_all", z, labels, backend="tiled", margin=0.2)
    assert total.shape == count.shape == valid.shape == (10,)


def test_importing_the_kernels_does_not_import_triton() -> None:
    import subprocess
    import sys

    code = "import sys, nodulebench.kernels; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
