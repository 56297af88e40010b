"""Manifest checks the other bundle tests left open: a label set's metadata path is checked on open
like every other path, and the values of a typed mapping (the INT8 gate) are type-checked too."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bundle import Bundle, Validation
from edgeclip.errors import BundleError
from tests.bundle.conftest import edit_manifest
from tests.bundle.test_records import GOLDEN

OUTSIDE = "../../outside/default.json"


@pytest.mark.parametrize("bad", [OUTSIDE, "/etc/passwd", "labels/../../x.json"])
def test_a_label_sets_meta_path_is_checked_on_open(bundle_copy: Path, bad: str) -> None:
    edit_manifest(bundle_copy, lambda m: m["labels"]["default"].update(meta=bad))
    with pytest.raises(BundleError, match="escapes the bundle") as err:
        Bundle.open(bundle_copy)
    assert f"label set 'default' path '{bad}'" in str(err.value)


def test_a_symlinked_label_meta_file_is_refused_on_open(bundle_copy: Path, tmp_path: Path) -> None:
    meta = Bundle.open(bundle_copy).manifest.labels["default"].meta
    here, there = bundle_copy / meta, tmp_path / "elsewhere.json"
    shutil.move(here, there)
    here.symlink_to(there)
    with pytest.raises(BundleError, match="is a symlink"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("value", ["0.995", None, True, [0.995]])
def test_gate_values_must_be_numbers(tmp_path: Path, value: Any) -> None:
    golden = Path(shutil.copytree(GOLDEN, tmp_path / "bundle_v1"))

    def edit(m: dict[str, Any]) -> None:
        entry = next(a for a in m["artifacts"] if a["encoder"] == "image" and a["precision"] == "int8")
        entry["validation"]["gate"]["min_cosine"] = value

    edit_manifest(golden, edit)
    with pytest.raises(BundleError, match=r"image/onnx-int8 validation\.gate must be an object of numbers"):
        Bundle.open(golden)


def test_gate_of_numbers_loads_and_widens_ints() -> None:
    v = Validation.from_dict({"gate": {"min_cosine": 1, "max_accuracy_drop": 0.5}})
    assert v.gate == {"min_cosine": 1.0, "max_accuracy_drop": 0.5}
    assert isinstance(v.gate["min_cosine"], float)
