"""Sphinx configuration for the nodulebench documentation."""

from __future__ import annotations

import sys
from pathlib import Path

import nodulebench

sys.path.insert(0, str(Path(__file__).parent / "_ext"))
from offline_inventory import OBJECTS, write_inventory  # noqa: E402

project = "nodulebench"
author = "The nodulebench developers"
copyright = "2026, The nodulebench developers"
release = nodulebench.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Triton is an optional extra: the docs build must not need it (nor a GPU).
autodoc_mock_imports = ["triton"]
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

_UPSTREAM = {
    "python": "https://docs.python.org/3",
    "torch": "https://docs.pytorch.org/docs/stable",
    "numpy": "https://numpy.org/doc/stable",
}
_OFFLINE = Path(__file__).parent / "_build" / "offline-inventories"
for _name in OBJECTS:
    write_inventory(_name, _OFFLINE / f"{_name}.inv")
# Online inventories first; offline (no network) builds fall back to the small ones
# written above, so links still resolve and nitpicky mode stays meaningful.
intersphinx_mapping = {
    name: (url, (None, str(_OFFLINE / f"{name}.inv"))) for name, url in _UPSTREAM.items()
}
intersphinx_timeout = 5

html_theme = "furo"
html_title = f"nodulebench {release}"
html_static_path = ["_static"]
templates_path = ["_templates"]
# "_*.rst" files are fragments that other pages pull in with ".. include::".
exclude_patterns = ["_build", "_*.rst"]
