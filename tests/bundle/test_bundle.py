"""Bundle verification: tampering, missing files, versions, paths that escape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError, UnknownNameError
from tests.bundle.conftest import edit_manifest


def test_clean_bundle_verifies(tiny_bundle: Path) -> None:
    Bundle.open(tiny_bundle).verify()


def test_tampered_artifact_is_refused(bundle_copy: Path) -> None:
    f = bundle_copy / "image/onnx-fp32/model.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="image/onnx-fp32/model.onnx' does not match its sha256"):
        Bundle.open(bundle_copy).verify()


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "labels/default.npy").unlink()
    with pytest.raises(BundleError, match="bundle file missing: labels/default.npy"):
        Bundle.open(bundle_copy).label_set("default")


def test_unknown_schema_version(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        Bundle.open(bundle_copy)


def test_not_json_and_wrong_types(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps({"format": "edgeclip-bundle", "schema_version": 1}))
    with pytest.raises(BundleError, match="malformed"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "image/../../x"])
def test_paths_escaping_the_bundle_are_refused(bundle_copy: Path, bad: str) -> None:
    def point_elsewhere(m: dict) -> None:  # type: ignore[type-arg]
        a = m["artifacts"][0]
        a["files"] = {bad: "0" * 64}

    edit_manifest(bundle_copy, point_elsewhere)
    with pytest.raises(BundleError, match="escapes the bundle"):
        Bundle.open(bundle_copy)  # when the manifest is read, not when the file is used (tests/bundle/test_paths.py)


def test_symlinked_file_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    f = bundle_copy / "labels/default.json"
    outside = tmp_path / "elsewhere.json"
    shutil.move(f, outside)
    f.symlink_to(outside)
    with pytest.raises(BundleError, match="symlink"):
        Bundle.open(bundle_copy).label_set("default")


def test_pickled_label_file_is_refused(bundle_copy: Path) -> None:
    from edgeclip._io import sha256_file

    npy = bundle_copy / "labels/default.npy"
    np.save(npy, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    digest = sha256_file(npy)
    edit_manifest(bundle_copy, lambda m: m["labels"]["default"]["files"].update({"labels/default.npy": digest}))
    with pytest.raises(BundleError, match="not a plain float array"):
        Bundle.open(bundle_copy).label_set("default")


def test_unknown_label_set(tiny_bundle: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown label set 'defualt'; did you mean 'default'"):
        Bundle.open(tiny_bundle).label_set("defualt")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        Bundle.open(tmp_path / "missing")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)


def test_weights_hash_is_optional_for_older_bundles(bundle_copy: Path) -> None:
    recorded = Bundle.open(bundle_copy).manifest.source_weights_sha256
    assert recorded and len(recorded) == 64
    # a bundle written before the field existed still loads and runs; its weights are unknown
    edit_manifest(bundle_copy, lambda m: m.pop("source_weights_sha256"))
    b = Bundle.open(bundle_copy)
    assert b.manifest.source_weights_sha256 is None
    assert "source_weights_sha256" not in b.manifest.to_dict()
    b.label_set("default")
    edit_manifest(bundle_copy, lambda m: m.update(source_weights_sha256=["not", "a", "hash"]))
    with pytest.raises(BundleError, match="source_weights_sha256 must be a string"):
        Bundle.open(bundle_copy)
