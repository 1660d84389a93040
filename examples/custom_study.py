"""A custom study: derive a config from a preset, write it as TOML, run the study on it.

The study script (``benchmarks/reproduce_study.py``, in a source checkout) reads TOML
configs; a preset is the place to start. This example loads the ``smoke`` preset, changes
the question (a lobulation shortcut instead of size and calcification; cross-entropy
against SupCon), writes ``custom.toml`` and runs the study on it. The study writes
``report.md``, ``metrics.json`` / ``.csv`` and figures into the output folder.

    python examples/custom_study.py --out custom-study           # about a minute on a CPU
    python examples/custom_study.py --tiny --out /tmp/custom     # smaller still
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (in the study extra)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "benchmarks" / "study" / "presets" / "smoke.toml"
STUDY = ROOT / "benchmarks" / "reproduce_study.py"


def toml_value(value: Any) -> str:
    """One TOML value: booleans, numbers, strings and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a basic TOML string for the plain text used here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """A nested dict as TOML: keys first, then sub-tables and arrays of tables."""
    lines = [
        f"{key} = {toml_value(value)}"
        for key, value in table.items()
        if not isinstance(value, dict)
        and not (isinstance(value, list) and value and isinstance(value[0], dict))
    ]
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += ["", f"[{name}]", to_toml(value, prefix=f"{name}.")]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += ["", f"[[{name}]]", to_toml(item, prefix=f"{name}.")]
    return "\n".join(lines).strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("custom-study"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the CPUs this process may use)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    config = tomllib.loads(PRESET.read_text())
    config["name"] = "lobulation-shortcut"
    config["losses"] = ["cross_entropy", "supcon"]
    config["experiments"] = [{"name": "lobulation", "shortcut": "lobulation", "strength": 0.9}]
    if args.tiny:
        config["data"].update(n_train=96, n_test=48, n_probe=48)
        config["train"].update(linear_steps=5)
        config["probe"].update(folds=2, intervention_n=8, gradcam_n=4)
    path = args.out / "custom.toml"
    path.write_text(to_toml(config) + "\n")
    print(f"wrote {path}")

    command = [
        sys.executable,
        str(STUDY),
        "--config",
        str(path),
        "--out",
        str(args.out),
        "--no-progress",
        *(["--threads", str(args.threads)] if args.threads else []),
    ]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
