"""Every path a manifest names is checked when the manifest is read, used or not (issue 14, item 7);
file hashes stay lazy: a load verifies what it runs, `inspect` verifies everything."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeclip._io import sha256_file
from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from edgeclip.errors import BundleError
from edgeclip.runtime import ZeroShotClassifier
from tests.bundle.conftest import edit_manifest
from tests.conftest import run_cli

TEXT_MODEL = "text/onnx-fp32/model.onnx"
OUTSIDE = "../../outside/model.onnx"


def _text(m: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(a for a in m["artifacts"] if a["encoder"] == "text")
    return entry


def _unused_text_file(bad: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        files = _text(m)["files"]
        files[bad] = files.pop(TEXT_MODEL)

    return edit


def _text_folder(bad: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: _text(m).update(path=bad)


def _label_embeddings(bad: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["labels"]["default"].update(embeddings=bad)


def _label_file(bad: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["labels"]["default"]["files"].update({bad: "0" * 64})


def _tokenizer(bad: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["tokenizer"].update(file=bad)


PLACES = {"unused text file": _unused_text_file, "text folder": _text_folder, "label embeddings": _label_embeddings,
          "label file": _label_file, "tokenizer": _tokenizer}
BAD = [OUTSIDE, "/etc/passwd", "text\\..\\..\\x.onnx", "", "text/../../x.onnx"]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("place", sorted(PLACES))
def test_every_manifest_path_is_checked_on_open(bundle_copy: Path, place: str, bad: str) -> None:
    edit_manifest(bundle_copy, PLACES[place](bad))
    with pytest.raises(BundleError, match="escapes the bundle") as err:
        Bundle.open(bundle_copy)
    assert f"'{bad}'" in str(err.value) and err.value.fix


def _plant_outside(bundle: Path) -> None:
    """The attack: a real model outside the bundle, its hash in the manifest, under the text entry
    that `classify` never runs."""
    outside = (bundle / OUTSIDE).resolve()
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle / TEXT_MODEL, outside)
    edit_manifest(bundle, _unused_text_file(OUTSIDE))


def test_classify_refuses_an_unused_entry_that_points_outside(bundle_copy: Path, tmp_path: Path) -> None:
    _plant_outside(bundle_copy)
    image = tmp_path / "shape.png"
    ShapesDataset("heldout", 1, 40)[0].image.save(image)
    proc = run_cli("classify", str(bundle_copy), str(image))
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("Error: ") and OUTSIDE in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    with pytest.raises(BundleError, match="artifact text/onnx-fp32 path '../../outside/model.onnx' escapes"):
        ZeroShotClassifier.load(bundle_copy, backend="onnxruntime")


@pytest.mark.parametrize("linked", [TEXT_MODEL, "text/onnx-fp32", "text"])
def test_a_symlink_is_refused_on_open_even_with_the_right_hash(bundle_copy: Path, tmp_path: Path,
                                                               linked: str) -> None:
    """An unused file, or a folder above it, swapped for a link to identical bytes elsewhere."""
    sha = Bundle.open(bundle_copy).manifest.find("text")[0].files[TEXT_MODEL]
    here, there = bundle_copy / linked, tmp_path / "elsewhere"
    shutil.move(here, there)
    here.symlink_to(there)
    assert sha256_file(bundle_copy / TEXT_MODEL) == sha  # the hash alone would not catch it
    with pytest.raises(BundleError, match=r"\(artifact text/onnx-fp32\) (is a|goes through the) symlink") as err:
        Bundle.open(bundle_copy)
    assert f"'{linked}'" in str(err.value)
    if linked == TEXT_MODEL:  # the CLI says so too, without a traceback (one case: each run costs seconds)
        proc = run_cli("inspect", str(bundle_copy), "--no-verify")
        assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and "symlink" in proc.stderr


def test_hashes_stay_lazy_classify_runs_inspect_reports(bundle_copy: Path, tmp_path: Path) -> None:
    """A corrupt file of the unused text encoder: classify (image encoder + label set) does not read
    it, so it runs; inspect verifies every file and names it."""
    model = bundle_copy / TEXT_MODEL
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    image = tmp_path / "shape.png"
    ShapesDataset("heldout", 1, 40)[0].image.save(image)
    proc = run_cli("classify", str(bundle_copy), str(image), "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert ZeroShotClassifier.load(bundle_copy, backend="onnxruntime").classify([image])[0].ok
    proc = run_cli("inspect", str(bundle_copy))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"Error: bundle file '{TEXT_MODEL}' does not match its sha256"), proc.stderr
