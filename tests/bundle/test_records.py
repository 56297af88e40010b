"""Typed manifest records (issue 14, item 7): a bundle written before them loads, runs and
round-trips; wrong types are refused with the field named; a newer writer's keys survive."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bundle import Bundle, Calibration, Environment, Measured, Validation
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import BundleError
from edgeclip.runtime import ZeroShotClassifier
from tests.bundle.conftest import edit_manifest
from tests.conftest import README_PARITY, TINY_CLASSES, run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "bundle_v1"  # see tests/golden/make_bundle_v1.py
KEYS = ["image/onnx-fp32", "text/onnx-fp32", "image/onnx-int8", "text/onnx-int8", "image/openvino-fp32",
        "text/openvino-fp32"]


@pytest.fixture()
def golden(tmp_path: Path) -> Path:
    return Path(shutil.copytree(GOLDEN, tmp_path / "bundle_v1"))


def _raw(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return data


def _entry(raw: dict[str, Any], key: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(a for a in raw["artifacts"] if f"{a['encoder']}/{a['target']}-{a['precision']}" == key)
    return entry


def test_a_bundle_written_before_the_records_loads_typed(golden: Path) -> None:
    b = Bundle.open(golden)
    b.verify()
    raw = _raw(golden)
    assert [a.key for a in b.manifest.artifacts] == KEYS
    for a in b.manifest.artifacts:
        v, r = a.validation, _entry(raw, a.key)
        assert isinstance(v, Validation) and isinstance(a.environment, Environment)
        assert v.passed is True and v.checked_with == r["validation"]["checked_with"]
        assert v.cosine_min == r["validation"]["cosine_min"] and v.batch_sizes == tuple(r["validation"]["batch_sizes"])
        if a.precision == "fp32":
            assert a.calibration is None and v.heldout is None
            assert v.threshold_cosine is not None and v.cosine_min >= README_PARITY["fp32"]
            continue
        c, rc = a.calibration, r["calibration"]
        assert isinstance(c, Calibration) and isinstance(c.measured, Measured) and isinstance(v.heldout, Measured)
        assert v.heldout.heldout_size == rc["measured"]["heldout_size"] == c.measured.heldout_size > 0
        assert c.method == rc["method"] and c.size == rc["size"] and c.warnings == rc["warnings"]
        assert c.float_defaults_measured_safe == rc["float_defaults_measured_safe"]
        assert v.gate == r["validation"]["gate"] and v.threshold_cosine is None
        # what only one quantizer records stays, untyped, in details
        assert set(c.details) == {"scheme", "op_types", "graph_preprocessing", "quantizer"}
    env = b.manifest.find("image", "openvino")[0].environment
    assert env.profile is None and set(env.details) == {"openvino", "source", "weights"}


def test_save_of_load_keeps_every_key_and_value_and_byte(golden: Path) -> None:
    before = (golden / "manifest.json").read_bytes()
    b = Bundle.open(golden)
    b.save_manifest()
    assert json.loads((golden / "manifest.json").read_bytes()) == json.loads(before)
    assert (golden / "manifest.json").read_bytes() == before  # key order too, so a signature over the bytes holds


def test_a_bundle_written_before_the_records_runs(golden: Path) -> None:
    images = [ShapesDataset("heldout", 6, 40)[i].image for i in range(6)]
    embeddings = {}
    for backend, precision in (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")):
        clf = ZeroShotClassifier.load(golden, backend=backend, precision=precision)
        assert clf.image.artifact.key == f"image/{'onnx' if backend == 'onnxruntime' else backend}-{precision}"
        assert all(c.ok and c.label in TINY_CLASSES for c in clf.classify(images))
        embeddings[(backend, precision)], _ = clf.embed_images(images)
    ref = embeddings[("onnxruntime", "fp32")]
    gate = Bundle.open(golden).manifest.find("image", "onnx", "int8")[0].validation.gate
    assert gate is not None
    for emb in embeddings.values():
        assert float(np.min(np.sum(ref * emb, axis=1))) >= gate["min_cosine"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path below the image/onnx-int8 entry ('-' deletes the key)."""

    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = _entry(m, "image/onnx-int8")
        for p in parents:
            node = node[p]
        if value == "-":
            del node[last]
        else:
            node[last] = value

    return edit


WRONG = {
    "passed a string": ("validation.passed", "yes", "validation.passed must be true or false or null, got str"),
    "cosine a string": ("validation.cosine_min", "0.99", "validation.cosine_min must be a number or null"),
    "probes a bool": ("validation.probes", True, "validation.probes must be an integer or null, got bool"),
    "batch size a string": ("validation.batch_sizes", [1, "8"], "validation.batch_sizes must be a list of integers"),
    "held-out cosine null": ("validation.heldout.cosine_min", None, "validation.heldout.cosine_min must be a number"),
    "validation a list": ("validation", [], "validation must be a JSON object, got list"),
    "max_batch a string": ("environment.max_batch", "8", "environment.max_batch must be an integer or null"),
    "profile a list": ("environment.profile", [1, 8, 32], "environment.profile must be an object or null"),
    "size a float": ("calibration.size", 64.5, "calibration.size must be an integer, got float"),
    "layers a string": ("calibration.excluded_layers", "n1", "calibration.excluded_layers must be a list of strings"),
    "warnings numbers": ("calibration.warnings", [1], "calibration.warnings must be a list of strings"),
    "no measured": ("calibration.measured", "-", "calibration lacks the field 'measured'"),
    "no measured cosine": ("calibration.measured.cosine_p1", "-", "calibration.measured lacks the field 'cosine_p1'"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_types_are_refused_with_the_field_named(golden: Path, case: str) -> None:
    path, value, message = WRONG[case]
    edit_manifest(golden, _set(path, value))
    with pytest.raises(BundleError) as err:
        Bundle.open(golden)
    assert str(err.value).startswith(f"manifest.json: artifact image/onnx-int8 {message}"), str(err.value)
    assert "re-export" in (err.value.fix or "")


def test_cli_names_the_wrong_field_without_a_traceback(golden: Path) -> None:
    edit_manifest(golden, _set("environment.max_batch", "8"))
    proc = run_cli("inspect", str(golden))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("Error: manifest.json: artifact image/onnx-int8 environment.max_batch must be")


NEWER = {  # fields a newer edgeclip might write, at every record level
    "validation.embedding_drift": {"p99": 0.01},
    "validation.heldout.cosine_p5": 0.9999,
    "environment.onnxruntime_genai": "0.5",
    "calibration.smoothing": [0.5, 0.8],
    "calibration.measured.cosine_p5": 0.9998,
}


def test_fields_of_a_newer_writer_survive_load_and_save(golden: Path) -> None:
    for path, value in NEWER.items():
        edit_manifest(golden, _set(path, value))
    written = _raw(golden)
    b = Bundle.open(golden)
    a = b.manifest.find("image", "onnx", "int8")[0]
    assert a.validation.details["embedding_drift"] == {"p99": 0.01}
    assert a.validation.heldout is not None and a.validation.heldout.details == {"cosine_p5": 0.9999}
    assert a.calibration is not None and a.calibration.measured.details == {"cosine_p5": 0.9998}
    b.save_manifest()
    assert _raw(golden) == written


def test_records_write_what_they_hold_and_nothing_else() -> None:
    assert Environment().to_dict() == {}
    assert Validation().to_dict() == {"passed": None, "checked_with": ""}  # the verdict is always written
    v = Validation(passed=None, checked_with="spec check", details={"spec": {"inputs": []}})
    assert v.to_dict() == {"passed": None, "checked_with": "spec check", "spec": {"inputs": []}}
    assert Validation.from_dict(v.to_dict()) == v
    # JSON numbers: an integral float written by another tool reads as a float
    assert Validation.from_dict({"cosine_min": 1, "passed": True}).cosine_min == 1.0
