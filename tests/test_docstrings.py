"""Every docstring example in the library runs and prints what it claims."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import nodulebench
from nodulebench.losses import registry

# Modules whose import needs an optional package that may be absent.
_OPTIONAL = {"nodulebench.kernels.triton_supcon": "triton", "nodulebench.plotting": "matplotlib"}

MODULES = sorted(info.name for info in pkgutil.walk_packages(nodulebench.__path__, "nodulebench."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    needs = _OPTIONAL.get(name)
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{name} needs {needs}")
    # An example may register a loss: keep the registry as the other tests see it.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("name", MODULES)
def test_every_example_prints_a_value(name: str) -> None:
    # An example that only assigns a name teaches nothing: each shows some output.
    needs = _OPTIONAL.get(name)
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{name} needs {needs}")
    module = importlib.import_module(name)
    silent = [
        test.name
        for test in doctest.DocTestFinder().find(module)
        if test.examples and not any(example.want.strip() for example in test.examples)
    ]
    assert not silent, f"examples that print nothing: {silent}"


# The modules users start from teach by example: each has at least one.
TAUGHT_BY_EXAMPLE = [
    "nodulebench.data.dataset",
    "nodulebench.data.spec",
    "nodulebench.data.measure",
    "nodulebench.data.measure3d",
    *(
        f"nodulebench.probing.{name}"
        for name in (
            "cka",
            "features",
            "interventions",
            "probes",
            "projection",
            "records",
            "saliency",
        )
    ),
]


@pytest.mark.parametrize("name", TAUGHT_BY_EXAMPLE)
def test_module_has_examples(name: str) -> None:
    module = importlib.import_module(name)
    assert any(test.examples for test in doctest.DocTestFinder().find(module)), name
