"""Developer sessions: ``nox`` runs lint, typecheck, docs and tests.

Every session's virtualenv sees the interpreter's site-packages, so the PyTorch build
you installed once (CPU or CUDA) is reused instead of being downloaded again: install
it first, e.g. ``python -m pip install torch``, then run ``nox``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.default_venv_backend = "venv"

VENV = ["--system-site-packages"]


@nox.session(venv_params=VENV)
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest)."""
    session.install("-e", ".[test,triton]")
    session.run("pytest", *session.posargs)


@nox.session(venv_params=VENV)
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "docs", "noxfile.py")


@nox.session(venv_params=VENV)
def typecheck(session: nox.Session) -> None:
    """Type-check ``src/`` with mypy (strict)."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session(venv_params=VENV)
def docs(session: nox.Session) -> None:
    """Build the HTML docs, nitpicky, with warnings as errors."""
    session.install("-e", ".[docs,study]")
    session.run("sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs",
                "docs/_build/html")


@nox.session(venv_params=VENV, default=False)
def fuzz(session: nox.Session) -> None:
    """Run the loss fuzz harness with its large Hypothesis profile (arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/losses/test_fuzz.py", *session.posargs,
                env={"NODULEBENCH_FUZZ_PROFILE": "fuzz-deep"})


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
