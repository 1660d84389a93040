"""Study runs per minute, before and after the training speed-ups, side by side in one run.

Each setting runs ``reproduce_study.py`` in a fresh process on the same configuration (by
default the quick preset's ``diameter`` experiment, one seed, every loss) and reports runs
per minute of wall time and CPU seconds per run (the latter is what a loaded machine
distorts least):

* ``before``: float32, contiguous memory, one process using ``--threads`` threads (the
  study's settings before the speed-ups).
* ``after``: bfloat16 autocast of the encoder, channels-last convolutions, ``--workers``
  processes sharing the threads.

    python benchmarks/bench_study.py --threads 2 --workers 2

``--train-only`` measures stage 1 alone, in this process on one thread, alternating the
two settings: CPU seconds per training, a ratio that a loaded machine distorts little.

Results are appended to ``benchmarks/results/bench_study.jsonl`` with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import cpu_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "reproduce_study.py"
SETTINGS = {
    "before": {"autocast": "none", "channels_last": False},
    "after": {"autocast": "bfloat16", "channels_last": True},
}


def toml_value(value: object) -> str:
    """A TOML literal of a value found in a preset."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, raw: dict) -> None:
    """Write a parsed preset back as TOML (tables one level deep, as presets are)."""
    lines = []
    for key, value in raw.items():
        if not isinstance(value, (dict, list)) or (
            isinstance(value, list) and value and not isinstance(value[0], dict)
        ):
            lines.append(f"{key} = {toml_value(value)}")
    for item in raw.get("experiments", []):
        lines += ["[[experiments]]"] + [f"{k} = {toml_value(v)}" for k, v in item.items()]
    for key, value in raw.items():
        if isinstance(value, dict) and key != "loss_options":
            lines += [f"[{key}]"] + [f"{k} = {toml_value(v)}" for k, v in value.items()]
    for loss, options in raw.get("loss_options", {}).items():
        lines += [f"[loss_options.{loss}]"] + [f"{k} = {toml_value(v)}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n")


def run_setting(name: str, raw: dict, threads: int, workers: int, folder: Path) -> dict:
    """Run the study once with one setting; wall time, CPU time of the children, runs."""
    raw = json.loads(json.dumps(raw))
    raw["train"].update(SETTINGS[name])
    config = folder / f"{name}.toml"
    write_config(config, raw)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--config",
            str(config),
            "--out",
            str(folder / name),
            "--no-progress",
            "--threads",
            str(threads),
            "--workers",
            str(workers if name == "after" else 1),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    records = json.loads((folder / name / "metrics.json").read_text())
    runs = len(records)
    # The same models in quality? Mean i.i.d. balanced accuracy over the runs, as a check.
    iid = sum(r["metrics"]["iid"]["balanced_accuracy"] for r in records) / runs
    return {
        "setting": name,
        "runs": runs,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "runs_per_min": round(60 * runs / wall, 2),
        "cpu_s_per_run": round(cpu / runs, 2),
        "iid_balanced_accuracy": round(iid, 3),
    }


def train_only(raw: dict, repeats: int) -> dict:
    """CPU seconds of stage-1 training per loss, both settings alternated, one thread."""
    import dataclasses

    import torch

    from study.config import config_from_dict
    from study.runner import prepare_data
    from study.training import train

    torch.set_num_threads(1)
    config = config_from_dict(raw)
    data = prepare_data(config, config.experiments[0], config.seeds[0])
    seconds = {name: 0.0 for name in SETTINGS}
    for _ in range(repeats + 1):  # the first round warms up and is not counted
        for name, options in SETTINGS.items():
            changed = dataclasses.replace(
                config, train=dataclasses.replace(config.train, **options)
            )
            start = time.process_time()
            for loss in config.losses:
                train(
                    changed,
                    loss,
                    data.train.images,
                    data.train.labels,
                    config.seeds[0],
                    torch.device("cpu"),
                )
            if _ > 0:
                seconds[name] += (time.process_time() - start) / (repeats * len(config.losses))
    return {
        "cpu_s_per_training": {k: round(v, 3) for k, v in seconds.items()},
        "ratio": round(seconds["before"] / seconds["after"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--experiment", default="diameter")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--losses", nargs="+", help="a subset of the preset's losses")
    parser.add_argument("--epochs", type=int, help="override train.epochs (default: preset's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--train-only", action="store_true", help="time stage-1 training alone, in this process"
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds of --train-only")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_study.jsonl")
    args = parser.parse_args()
    raw = tomllib.loads((HERE / "study" / "presets" / f"{args.preset}.toml").read_text())
    raw["experiments"] = [e for e in raw["experiments"] if e["name"] == args.experiment]
    raw["seeds"] = args.seeds
    if args.losses:
        raw["losses"] = args.losses
    if args.epochs:
        raw["train"]["epochs"] = args.epochs
    if args.train_only:
        result = train_only(raw, args.repeats)
        header = (
            f"{args.preset}/{args.experiment}: stage-1 training of {raw['losses']}, "
            f"epochs {raw['train']['epochs']}, one thread, on {cpu_name()}"
        )
        print(header)
        for name, value in result["cpu_s_per_training"].items():
            print(f"  {name:>6}: {value} CPU s per training")
        print(f"  speed-up: {result['ratio']:.2f}x less CPU per training")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps({"config": header, **result}) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_setting(name, raw, args.threads, args.workers, Path(tmp)) for name in SETTINGS]
    ratio = rows[0]["cpu_s_per_run"] / rows[1]["cpu_s_per_run"]
    wall_ratio = rows[1]["runs_per_min"] / rows[0]["runs_per_min"]
    header = (
        f"{args.preset}/{args.experiment}, losses {raw['losses']}, seeds {args.seeds}, "
        f"epochs {raw['train']['epochs']}, {args.threads} thread(s), after with "
        f"{args.workers} worker(s), on {cpu_name()}"
    )
    print(header)
    for row in rows:
        print(
            f"  {row['setting']:>6}: {row['runs']} runs in {row['wall_s']} s = "
            f"{row['runs_per_min']} runs/min; {row['cpu_s_per_run']} CPU s per run; mean "
            f"i.i.d. balanced accuracy {row['iid_balanced_accuracy']}"
        )
    print(f"  speed-up: {wall_ratio:.2f}x runs/min, {ratio:.2f}x less CPU per run")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "config": header,
                    "rows": rows,
                    "runs_per_min_ratio": round(wall_ratio, 3),
                    "cpu_per_run_ratio": round(ratio, 3),
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
