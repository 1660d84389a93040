"""Triton SupCon backend: capability record, argument checks, interpreter run, CUDA suite.

The value and gradient comparisons on the CPU live in ``triton_interpret_cases.py``, run
here in a subprocess because ``TRITON_INTERPRET=1`` must be set before Triton is imported.
The ``gpu``-marked tests run the kernels at realistic sizes on CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nodulebench.kernels._triton_utils import TRITON_SUPCON_CAPABILITIES, interpreter_enabled
from nodulebench.kernels.dispatch import BACKENDS, select_backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
CASES = Path(__file__).with_name("triton_interpret_cases.py")
REPO = Path(__file__).resolve().parents[2]


@needs_triton
def test_kernels_match_reference_under_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(CASES),
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "log_cli=false",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


def test_capabilities_are_consistent() -> None:
    caps = TRITON_SUPCON_CAPABILITIES
    assert set(caps.tolerances) == set(caps.dtypes)
    assert caps.variants == ("out", "in") and caps.deterministic
    assert caps.max_dim >= 256
    for tol in caps.tolerances.values():
        assert 0 < tol.loss_atol < 0.1 and 0 < tol.loss_rtol < 0.1 and 0 < tol.grad_rel < 0.1


def _triton_reason(z: torch.Tensor, variant: str = "out") -> str | None:
    # What the dispatcher asks: the one declaration of what the Triton kernels serve.
    return BACKENDS["triton"].why_not("supcon", z, {"variant": variant})


@pytest.mark.parametrize(
    ("z", "variant", "fragment"),
    [
        (torch.zeros(4, 8, dtype=torch.float64), "out", "dtypes"),
        (torch.zeros(4, 300), "out", "D <= 256"),
        (torch.zeros(4, 8), "both", "variant in"),
    ],
)
def test_unsupported_reason_names_the_requirement(
    z: torch.Tensor, variant: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = _triton_reason(z, variant)
    assert reason is not None and fragment in reason


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "on", "yes"])
def test_interpreter_switch_is_read_as_triton_reads_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_enabled()
    assert "cpu" in BACKENDS["triton"].devices_now()
    if HAS_TRITON:
        assert _triton_reason(torch.zeros(4, 8, dtype=torch.bfloat16)) is None
        assert select_backend("supcon", "triton", torch.zeros(4, 8)) == "triton"


@pytest.mark.parametrize("value", ["", "0", "false", "off"])
def test_cpu_needs_the_interpreter(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert not interpreter_enabled()
    reason = _triton_reason(torch.zeros(4, 8))
    assert reason is not None and "devices" in reason
    with pytest.raises(ValueError, match="backend='triton' cannot compute 'supcon'"):
        select_backend("supcon", "triton", torch.zeros(4, 8))


@needs_triton
@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"z": torch.zeros(4, 8, dtype=torch.int64)}, TypeError, "z must have a floating"),
        ({"z": torch.zeros(4)}, ValueError, "z must have shape (N, D)"),
        ({"z": [[0.0]]}, TypeError, "z must be a torch.Tensor"),
        ({"labels": torch.zeros(4)}, TypeError, "labels must have an integer dtype"),
        ({"labels": torch.zeros(5, dtype=torch.int64)}, ValueError, "one entry per row"),
        ({"labels": torch.zeros(4, 1, dtype=torch.int64)}, ValueError, "labels must have shape"),
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"variant": "both"}, ValueError, "variant must be one of"),
        ({"precision": "fp64"}, ValueError, "precision must be one of"),
        ({"z": torch.zeros(4, 8, dtype=torch.float64)}, ValueError, "z must have dtype in"),
        ({"z": torch.zeros(4, 257)}, ValueError, "at most 256 columns"),
        (
            {"z": torch.zeros(0, 8), "labels": torch.zeros(0, dtype=torch.int64)},
            ValueError,
            "at least one row",
        ),
    ],
)
def test_bad_arguments_raise_with_a_message(
    kwargs: dict[str, object], error: type[Exception], fragment: str
) -> None:
    from nodulebench.kernels.triton_supcon import supcon_triton

    call: dict[str, object] = {
        "z": torch.zeros(4, 8),
        "labels": torch.zeros(4, dtype=torch.int64),
        "temperature": 0.1,
    }
    call.update(kwargs)
    z, labels = call.pop("z"), call.pop("labels")
    with pytest.raises(error, match=re.escape(fragment)):
        supcon_triton(z, labels, **call)  # type: ignore[arg-type]


@needs_triton
def test_cpu_tensor_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodulebench.kernels.triton_supcon import supcon_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        supcon_triton(torch.zeros(4, 8), torch.zeros(4, dtype=torch.int64), temperature=0.1)


# --- CUDA, realistic sizes -------------------------------------------------------------


def _dense_reference_float64(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, variant: str
) -> torch.Tensor:
    """Vectorised float64 SupCon on a GPU (B = 4096 fits easily), from the definition."""
    z = z.to(torch.float64)
    n_rows = z.shape[0]
    eye = torch.eye(n_rows, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, -math.inf)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    lse_all = torch.logsumexp(sim, 1)
    if variant == "out":
        loss = lse_all - sim.masked_fill(~positive, 0.0).sum(1) / count.clamp_min(1)
    else:
        lse_pos = torch.logsumexp(sim.masked_fill(~positive, -math.inf), 1)
        loss = lse_all - lse_pos + torch.log(count.clamp_min(1).to(torch.float64))
    return torch.where(count > 0, loss, torch.zeros_like(loss))


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_cuda_matches_float64_at_b4096(variant: str, dtype: torch.dtype) -> None:
    from nodulebench.kernels.triton_supcon import supcon_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    z = torch.nn.functional.normalize(
        torch.randn(4096, 128, device="cuda", generator=gen), dim=1
    ).to(dtype)
    labels = torch.randint(0, 100, (4096,), device="cuda", generator=gen)
    weights = torch.rand(4096, device="cuda", generator=gen)
    z_kernel = z.clone().requires_grad_(True)
    loss, _ = supcon_triton(z_kernel, labels, temperature=0.1, variant=variant)
    (loss * weights).sum().backward()
    z_ref = z.to(torch.float64).requires_grad_(True)
    loss_ref = _dense_reference_float64(z_ref, labels, 0.1, variant)
    (loss_ref * weights.to(torch.float64)).sum().backward()
    tol = TRITON_SUPCON_CAPABILITIES.tolerances[dtype]
    torch.testing.assert_close(
        loss.to(torch.float64), loss_ref.detach(), atol=tol.loss_atol, rtol=tol.loss_rtol
    )
    assert z_kernel.grad is not None and z_ref.grad is not None
    error = (z_kernel.grad.to(torch.float64) - z_ref.grad).abs().max()
    assert error <= tol.grad_rel * z_ref.grad.abs().max()


@pytest.mark.gpu
@needs_triton
def test_cuda_b32768_is_deterministic_and_small_in_memory() -> None:
    from nodulebench.kernels.triton_supcon import supcon_triton

    gen = torch.Generator(device="cuda").manual_seed(1)
    z = torch.nn.functional.normalize(
        torch.randn(32768, 128, device="cuda", generator=gen), dim=1
    ).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (32768,), device="cuda", generator=gen)
    results = []
    for _ in range(2):
        zz = z.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        loss, valid = supcon_triton(zz, labels, temperature=0.1)
        loss[valid].mean().backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - baseline
        assert extra <= 64 * 2**20, f"extra memory {extra} bytes"
        assert zz.grad is not None and torch.isfinite(zz.grad).all()
        results.append((loss.detach(), zz.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@needs_triton
def test_gpu_check_script_dry_run_writes_its_json(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the script must set it itself for --dry-run
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--no-sweep",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "triton_supcon_gpu_check.json").read_text())
    assert report["dry_run"] is True and report["sweep"] == []
    assert len(report["correctness"]) == 6 and all(row["ok"] for row in report["correctness"])
    assert {(row["variant"], row["dtype"]) for row in report["timing"]} >= {
        ("out", "bfloat16"),
        ("out", "float32"),
    }
    assert all(row["bitwise_deterministic"] for row in report["timing"])
    assert report["huge"]["finite"] is True


@needs_triton
def test_compact_labels_preserves_equality_and_counts_positives() -> None:
    from nodulebench.kernels.triton_supcon import compact_labels

    big = 2**40  # big and big + 2**32 collide if merely cast to int32
    labels = torch.tensor([big, big + 2**32, -5, big, 7, -5, big + 2**32, 0, big])
    ids, positives = compact_labels(labels)
    assert ids.dtype == torch.int32 and positives.dtype == torch.int32
    same = labels[:, None] == labels[None, :]
    assert torch.equal(ids[:, None] == ids[None, :], same)
    assert int(ids.min()) == 0 and int(ids.max()) == labels.unique().numel() - 1
    assert torch.equal(positives, (same.sum(1) - 1).to(torch.int32))


@pytest.mark.gpu
@pytest.mark.slow
@needs_triton
def test_cuda_one_million_rows_complete() -> None:
    from nodulebench.kernels.triton_supcon import supcon_triton

    gen = torch.Generator(device="cuda").manual_seed(2)
    n_rows = 1_048_576
    z = (
        torch.nn.functional.normalize(torch.randn(n_rows, 128, device="cuda", generator=gen), dim=1)
        .to(torch.bfloat16)
        .requires_grad_(True)
    )
    labels = torch.randint(0, n_rows // 32, (n_rows,), device="cuda", generator=gen)
    loss, valid = supcon_triton(z, labels, temperature=0.1)
    (loss.sum() / valid.sum()).backward()
    assert torch.isfinite(loss).all() and z.grad is not None and torch.isfinite(z.grad).all()
