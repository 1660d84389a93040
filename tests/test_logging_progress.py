"""The library's logging and optional progress bars."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from nodulebench import NoduleSpec, SyntheticNodules
from nodulebench._progress import progress_bar
from nodulebench.probing import intervention_sensitivity, probe_factors


def _features() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    return x, {"a": x[:, 0] + 0.1 * torch.randn(60, generator=g)}


def test_probes_log_to_the_nodulebench_logger(caplog: pytest.LogCaptureFixture) -> None:
    x, factors = _features()
    with caplog.at_level(logging.INFO, logger="nodulebench"):
        probe_factors(x, factors, folds=3)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("nodulebench.")]
    assert messages[0] == "probing 1 factor(s) in 1 feature set(s) of 60 samples, 3 folds"
    assert messages[-1].startswith("probes done in ")


def test_progress_bars_go_to_stderr_and_change_no_result(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    x, factors = _features()
    quiet = probe_factors(x, factors, folds=3)
    capsys.readouterr()
    shown = probe_factors(x, factors, folds=3, progress=True)
    assert shown == quiet
    assert "probes" in capsys.readouterr().err
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    dataset = SyntheticNodules(NoduleSpec(), n=8, image_size=16)
    model(dataset.render(range(1)))  # materialise the lazy layer
    intervention_sensitivity(model, dataset, factors=["spiculation"], n=4, progress=True)
    assert "interventions" in capsys.readouterr().err


def test_progress_without_tqdm_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert list(progress_bar([1, 2], enabled=False, total=2, desc="x")) == [1, 2]
    with pytest.raises(ImportError, match=r"nodulebench\[study\].*or pass progress=False"):
        list(progress_bar([1, 2], enabled=True, total=2, desc="x"))
