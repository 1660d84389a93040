"""Before any training: contained study names, and every loss called once with its options."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import reproduce_study
from study import preflight
from study.config import STUDY_LOSSES, ConfigError, config_from_dict, load_config, preset_path
from study.preflight import check_losses_run
from study.store import StudyWriteError

PRESETS = Path(reproduce_study.__file__).parent / "study" / "presets"
CPU = torch.device("cpu")


def smoke_raw() -> dict:
    return tomllib.loads((PRESETS / "smoke.toml").read_text())


@pytest.mark.parametrize(
    "name", ["../../escaped", "a/b", "..", ".", "", ".hidden", "a\\b", "tab\there", "x" * 201]
)
def test_a_name_must_be_a_plain_file_name(name: str) -> None:
    with pytest.raises(ConfigError, match="name must be a plain file name") as info:
        config_from_dict(smoke_raw() | {"name": name})
    assert repr(name) in str(info.value)


def test_plain_names_are_accepted() -> None:
    for name in ("my-study", "lr 0.003", "étude_2"):
        assert config_from_dict(smoke_raw() | {"name": name}).name == name


def test_escaping_name_writes_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from tmp/a/b: the name that would climb to tmp/escaped is refused, nothing written."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config = tmp_path / "bad.toml"
    config.write_text(
        'name = "../../escaped"\n'
        + (PRESETS / "smoke.toml").read_text().replace('name = "smoke"\n', "")
    )
    assert reproduce_study.main(["--config", str(config), "--no-progress"]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "bad.toml"]


def _all_losses(**loss_options: dict) -> object:
    config = load_config(preset_path("smoke"))
    return dataclasses.replace(config, losses=tuple(STUDY_LOSSES), loss_options=loss_options)


def test_every_study_loss_passes_with_default_options() -> None:
    check_losses_run(_all_losses(), CPU)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"supcon": {"reduction": "none"}},
            "[loss_options.supcon] reduction must be 'mean' in the study",
        ),
        (
            {"cross_entropy": {"reduction": "sum"}},
            "[loss_options.cross_entropy] reduction must be 'mean' in the study",
        ),
        (
            {"supcon": {"backend": "triton"}},
            "loss 'supcon' (supcon with options {'backend': 'triton'}) fails on a tiny batch on "
            "cpu, before any training: ValueError: backend='triton'",
        ),
        (
            {"group_dro": {"num_groups": 2}},
            "loss 'group_dro' (group_dro with options {'num_groups': 2}) fails on a tiny batch",
        ),
    ],
)
def test_options_that_fail_when_run_are_named(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_losses_run(_all_losses(**options), CPU)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_a_loss_that_returns_no_scalar_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss whose value is per sample (whatever its options say) fails before training."""

    class PerSample(torch.nn.Module):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    monkeypatch.setattr(preflight, "build_losses", lambda config, loss: [PerSample()])
    config = dataclasses.replace(load_config(preset_path("smoke")), losses=("cross_entropy",))
    with pytest.raises(ConfigError, match=r"'cross_entropy' .* returns shape \(8,\), not a scalar"):
        check_losses_run(config, CPU)


def test_bad_options_stop_the_job_before_the_first_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (PRESETS / "smoke.toml").read_text()
    raw = raw.replace("[loss_options.group_dro]\n", "[loss_options.group_dro]\nnum_groups = 2\n")
    config = tmp_path / "bad.toml"
    config.write_text(raw)
    out = tmp_path / "out"
    args = ["--config", str(config), "--out", str(out), "--no-progress", "--losses", "group_dro"]
    assert reproduce_study.main(args) == 2
    assert "num_groups" in capsys.readouterr().err
    assert not out.exists()


def test_write_failure_during_the_study_is_a_named_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise StudyWriteError("cannot write x.json in /results/runs (No space left on device)")

    monkeypatch.setattr(reproduce_study, "run_grid", full_disk)
    out = tmp_path / "out"
    try:
        code = reproduce_study.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    finally:
        for handler in list(reproduce_study.log.handlers):  # main logs to out/study.log
            reproduce_study.log.removeHandler(handler)
            handler.close()
    assert code == 1
    assert "error: cannot write x.json in /results/runs" in capsys.readouterr().err
    # the lock was released: another study may use the folder now
    reproduce_study.lock_results_folder(out).close()
