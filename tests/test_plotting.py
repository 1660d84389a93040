"""One plotting convention: the user's backend is kept, one error when matplotlib is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nodulebench.plotting as plotting
from nodulebench import NoduleSpec, SyntheticNodules, probing

pytest.importorskip("matplotlib")


def test_plotting_keeps_the_users_backend(tmp_path: Path) -> None:
    # A fresh interpreter: the backend is chosen before pyplot is imported, as a user does.
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "from nodulebench import SyntheticNodules\n"
        "from nodulebench.plotting import plot_sample_grid, plot_traversals\n"
        "ds = SyntheticNodules(n=16, seed=0, image_size=32)\n"
        f"plot_sample_grid(ds, per_group=2, path={str(tmp_path / 'grid.png')!r})\n"
        f"plot_traversals(ds, 0, [('diameter_mm', [6, 12])], path={str(tmp_path / 't.png')!r})\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
    for name in ("grid.png", "t.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plotting.plot_sample_grid(SyntheticNodules(n=4, image_size=16)),
        lambda: plotting.plot_traversals(
            SyntheticNodules(n=4, image_size=16), 0, [("diameter_mm", [6.0])]
        ),
        lambda: probing.plot_embedding_scatter(torch.zeros(3, 2), torch.zeros(3)),
        lambda: probing.plot_gradcam_overlays(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)),
    ],
)
def test_missing_matplotlib_gives_one_install_hint(monkeypatch: pytest.MonkeyPatch, draw) -> None:
    # None in sys.modules makes ``import matplotlib...`` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'nodulebench\[plot\]'"):
        draw()


def test_probing_figures_are_reexported_beside_the_data_figures() -> None:
    for name in (
        "plot_probe_heatmap",
        "plot_sensitivity_bars",
        "plot_embedding_scatter",
        "plot_gradcam_overlays",
    ):
        assert getattr(plotting, name) is getattr(probing, name)
        assert name in plotting.__all__


def test_sample_grid_has_one_row_per_category() -> None:
    import matplotlib.pyplot as plt

    ds = SyntheticNodules(NoduleSpec(), n=40, seed=3, image_size=16)
    fig = plotting.plot_sample_grid(ds, by="calcification", per_group=3)
    try:
        rows = ["absent", "central", "laminated", "popcorn", "diffuse", "eccentric", "stippled"]
        assert len(fig.axes) == len(rows) * 3
        assert [ax.get_ylabel() for ax in fig.axes[::3]] == rows
    finally:
        plt.close(fig)
