"""The package frame: version, public names, lazy optional imports, validation helpers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import nodulebench
from nodulebench import _validation as v


def test_version_is_pep440() -> None:
    assert re.fullmatch(
        r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", nodulebench.__version__
    )


def test_all_names_exist_and_are_unique() -> None:
    assert len(set(nodulebench.__all__)) == len(nodulebench.__all__)
    for name in nodulebench.__all__:
        assert hasattr(nodulebench, name), name


def test_import_does_not_load_heavy_optional_packages() -> None:
    # Compared with what ``import torch`` alone loads: torch.hub itself imports tqdm.
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import nodulebench\n"
        "heavy = [m for m in ('matplotlib', 'triton', 'tqdm')\n"
        "         if m in sys.modules and m not in before]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_device_and_dtype_fixtures(device: torch.device, dtype: torch.dtype) -> None:
    x = torch.zeros(2, device=device, dtype=dtype)
    assert x.device.type == device.type
    assert x.dtype == dtype


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (
            lambda: v.check_choice("reduction", "avg", ("mean", "sum")),
            ValueError,
            "reduction must be one of 'mean', 'sum'; got 'avg'",
        ),
        (lambda: v.check_positive("temperature", 0.0), ValueError, "temperature must be"),
        (lambda: v.check_positive("temperature", float("nan")), ValueError, "got nan"),
        (lambda: v.check_positive("margin", -1.0, allow_zero=True), ValueError, ">= 0"),
        (lambda: v.check_positive("margin", "1"), TypeError, "got str"),
        (lambda: v.check_in_range("strength", 1.5, -1, 1), ValueError, "[-1, 1]"),
        (
            lambda: v.check_ndim("labels", torch.zeros(2, 2), (1,), "(B,)"),
            ValueError,
            "got shape (2, 2)",
        ),
        (lambda: v.check_ndim("labels", [1, 2], (1,), "(B,)"), TypeError, "got list"),
        (
            lambda: v.check_floating("embeddings", torch.zeros(2, dtype=torch.long)),
            TypeError,
            "torch.int64",
        ),
        (lambda: v.check_integer_tensor("labels", torch.zeros(2)), TypeError, "torch.float32"),
        (
            lambda: v.check_integer_tensor("labels", torch.zeros(2, dtype=torch.bool)),
            TypeError,
            "torch.bool",
        ),
    ],
)
def test_validation_messages_name_argument_and_value(call, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_validation_accepts_valid_values() -> None:
    v.check_choice("reduction", "mean", ("mean", "sum"))
    v.check_positive("temperature", 0.07)
    v.check_positive("margin", 0, allow_zero=True)
    v.check_in_range("strength", -1.0, -1, 1)
    v.check_ndim("labels", torch.zeros(3), (1,), "(B,)")
    v.check_floating("embeddings", torch.zeros(2))
    v.check_integer_tensor("labels", torch.zeros(2, dtype=torch.int32))


def test_did_you_mean_names_the_closest_choice_or_nothing() -> None:
    from nodulebench._validation import check_choice, did_you_mean

    assert did_you_mean("diamter_mm", ["diameter_mm", "spiculation"]) == (
        " (did you mean 'diameter_mm'?)"
    )
    assert did_you_mean("zzz", ["diameter_mm"]) == ""
    assert did_you_mean(3, ["diameter_mm"]) == ""
    with pytest.raises(ValueError, match=r"got 'supconn' \(did you mean 'supcon'\?\)"):
        check_choice("loss", "supconn", ["supcon", "ntxent"])
