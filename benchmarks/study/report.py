"""Aggregate finished runs into ``metrics.json``, ``metrics.csv``, figures and ``report.md``."""

from __future__ import annotations

import csv
import io
from typing import Any

from .config import StudyConfig
from .runner import run_id
from .store import RunStore, atomic_write_bytes, atomic_write_json

METRICS = (
    "worst_group_accuracy",
    "balanced_accuracy",
    "accuracy",
    "sensitivity",
    "specificity",
    "roc_auc",
    "ece",
)


def load_records(config: StudyConfig, store: RunStore) -> list[dict[str, Any]]:
    """The records of every run of the config that has finished, in grid order."""
    records = []
    for experiment in config.experiments:
        for seed in config.seeds:
            for loss in config.losses:
                rid = run_id(experiment.name, loss, seed)
                if store.exists(rid):
                    records.append(store.load_record(rid))
    return records


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row per run: identity, then ``<test>.<metric>`` and ``<test>.group.<group>``.

    The other heads' worst-group accuracies follow as ``<head>.<test>.worst_group_accuracy``,
    then each selection regime's epoch and worst-group accuracies
    (``selection.<regime>.epoch``, ``selection.<regime>.<test>.worst_group_accuracy``).
    """
    row: dict[str, Any] = {
        k: record[k] for k in ("run_id", "experiment", "shortcut", "strength", "loss", "seed")
    }
    for test, metrics in record["metrics"].items():
        for metric in METRICS:
            row[f"{test}.{metric}"] = metrics[metric]
        for group, accuracy in metrics["group_accuracy"].items():
            row[f"{test}.group.{group}"] = accuracy
    for head, tests in record["heads"].items():
        for test, metrics in tests.items():
            row[f"{head}.{test}.worst_group_accuracy"] = metrics["worst_group_accuracy"]
    for regime, chosen in record.get("selection", {}).items():
        row[f"selection.{regime}.epoch"] = chosen["epoch"]
        for test, metrics in chosen["metrics"].items():
            row[f"selection.{regime}.{test}.worst_group_accuracy"] = metrics["worst_group_accuracy"]
    for key, value in record.get("error_set", {}).items():
        row[f"error_set.{key}"] = value
    row["train_seconds"] = round(record["train_seconds"], 3)
    return row


def write_metrics(store: RunStore, records: list[dict[str, Any]]) -> None:
    """``metrics.json`` (the full run records) and ``metrics.csv`` (one row per run)."""
    atomic_write_json(store.root / "metrics.json", records)
    rows = [flat_row(r) for r in records]
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(store.root / "metrics.csv", buffer.getvalue().encode())


def machine_of(records: list[dict[str, Any]]) -> str:
    """The machine(s) that produced the runs, in words."""
    return "; ".join(sorted({r["machine"] for r in records})) or "no run yet"


def write_report(config: StudyConfig, store: RunStore) -> None:
    """Write every aggregate output of the study from the finished runs.

    Runs not finished yet (another shard's, say) are named at the top of the report.
    """
    from .analysis import study_cka
    from .document import to_markdown
    from .figures import write_figures
    from .narrative import report_blocks
    from .runner import missing_runs

    records = load_records(config, store)
    write_metrics(store, records)
    cka = study_cka(config, store)
    figures = write_figures(config, store, records, cka)
    blocks = report_blocks(
        config, cka, records, figures, machine_of(records), missing_runs(config, store)
    )
    atomic_write_bytes(store.root / "report.md", to_markdown(blocks).encode())
