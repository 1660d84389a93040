"""Developer sessions: ``nox`` runs lint, typecheck, docs and tests.

Every session's virtualenv sees the interpreter's site-packages, so the PyTorch build
you installed once (CPU or CUDA) is reused instead of being downloaded again: install
it first, e.g. ``python -m pip install torch``, then run ``nox``. The exception is
``tests_oldest``: it installs the oldest PyTorch that ``pyproject.toml`` accepts (a CPU
build) into a virtualenv of its own.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox on Python 3.10
    import tomli as tomllib

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.default_venv_backend = "venv"

VENV = ["--system-site-packages"]
# CPU builds of PyTorch (PyPI's Linux wheels pull several GB of CUDA libraries).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_floor() -> str:
    """The lowest torch version ``pyproject.toml`` accepts (``torch>=X``)."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"torch\s*>=\s*([0-9.]+)", requirement)
        if found:
            return found.group(1)
    raise RuntimeError("pyproject.toml has no 'torch>=X' dependency")


@nox.session(venv_params=VENV)
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest)."""
    session.install("-e", ".[test,triton]")
    session.run("pytest", *session.posargs)


@nox.session(default=False)
def tests_oldest(session: nox.Session) -> None:
    """Run the tests on the oldest supported torch, in a venv of its own (CPU build)."""
    session.install(f"torch=={torch_floor()}", "--extra-index-url", TORCH_CPU_INDEX)
    session.install("-e", ".[test]")
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", *session.posargs)


@nox.session(venv_params=VENV)
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff (the pinned version of the ``lint`` extra)."""
    session.install("-e", ".[lint]")
    paths = ("src", "tests", "benchmarks", "examples", "docs", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(venv_params=VENV)
def typecheck(session: nox.Session) -> None:
    """Type-check ``src/`` and the study package (``benchmarks/study``) with mypy (strict)."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session(venv_params=VENV)
def docs(session: nox.Session) -> None:
    """Build the HTML docs, nitpicky, with warnings as errors."""
    session.install("-e", ".[docs,study]")
    session.run(
        "sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session(venv_params=VENV, default=False)
def fuzz(session: nox.Session) -> None:
    """Run the loss fuzz harness with its large Hypothesis profile (arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "tests/losses/test_fuzz.py",
        *session.posargs,
        env={"NODULEBENCH_FUZZ_PROFILE": "fuzz-deep"},
    )


@nox.session(venv_params=VENV, default=False)
def bench(session: nox.Session) -> None:
    """Run the speed and memory benchmarks (arguments go to each script)."""
    session.install("-e", ".[study]")
    for script in ("bench_data.py", "bench_losses.py"):
        session.run("python", f"benchmarks/{script}", *session.posargs)


@nox.session(venv_params=VENV, default=False)
def study(session: nox.Session) -> None:
    """Reproduce the study (default: the quick preset; arguments go to the script)."""
    session.install("-e", ".[study]")
    args = session.posargs or ["--preset", "quick"]
    session.run("python", "benchmarks/reproduce_study.py", *args)
