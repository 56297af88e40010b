"""The runtime's precision choice follows latencies measured on this host (runtime/timings.py):
`edgeclip bench` and `precision="fastest"` record interleaved comparisons, a later load takes the
fastest, and a record from other settings, other artifacts or an unreadable file never applies.

Every test reads the timings file itself (EDGECLIP_TIMINGS, a temp file set by tests/conftest.py)
rather than the runtime's report of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bench.run import BenchConfig, run_bench
from edgeclip.bundle import Bundle
from edgeclip.export.driver import export_bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime import timings as timings_module
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.timings import comparison_key, host_key, record, recorded_choice, timings_path
from tests.conftest import TINY_CLASSES, run_cli
from tests.runtime.conftest import plant_record

CALIB = {"calib": "builtin:shapes", "calib_size": 32}
THREADS = 1


@pytest.fixture(scope="module")
def two_precisions(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's image and text towers for onnxruntime in fp32 and in int8."""
    out = tmp_path_factory.mktemp("timings") / "b.edgeclip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("calib-cache")))
        export_bundle(tiny_checkpoint, out, targets=["onnx"], labels={"default": (TINY_CLASSES, None)})
        export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8", options=CALIB)
    return out


def _stored(path: Path, backend: str, options: BackendOptions, artifacts: list[Any]) -> dict[str, Any]:
    """The comparison the file holds for these artifacts under these options (KeyError if none)."""
    data = json.loads(path.read_text())
    return dict(data["hosts"][host_key(backend, options)][comparison_key(artifacts)])


def test_bench_records_each_comparison_and_a_later_load_takes_the_fastest(two_precisions: Path,
                                                                          timings: Path) -> None:
    report = run_bench(BenchConfig(bundle=two_precisions, backends=["onnxruntime"], batch_sizes=[1], runs=8,
                                   warmup=1, threads=THREADS, baseline="none", end_to_end=False, memory=False,
                                   label_classes=0), log=lambda _: None)
    assert len(report["timings_recorded"]) == 2, report["timings_recorded"]
    bundle = Bundle.open(two_precisions)
    options = BackendOptions(threads=THREADS)
    rows = {(r["encoder"], r["precision"]): r["median_ms"] for r in report["rows"] if r["mode"] == "model"}
    chosen = {}
    for encoder in ("image", "text"):
        stored = _stored(timings, "onnxruntime", options, bundle.manifest.find(encoder, "onnx"))
        assert stored["by"] == "edgeclip bench"
        # the file holds what bench measured in its interleaved run, precision by precision
        assert stored["ms"] == pytest.approx({p: rows[(encoder, p)] for p in ("fp32", "int8")}, abs=1e-3)
        chosen[encoder] = min(stored["ms"], key=stored["ms"].get)
    clf = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS)
    assert clf.image.artifact.precision == chosen["image"]
    assert "measured by edgeclip bench" in clf.image.reason
    clf.embed_texts(["a red circle"])  # loads the text tower the same way
    assert clf._text is not None and clf._text.artifact.precision == chosen["text"]


def test_a_record_overrides_the_preference_only_for_its_own_settings(two_precisions: Path, timings: Path) -> None:
    bundle = Bundle.open(two_precisions)
    options = BackendOptions(threads=THREADS)
    # without a record: the backend's preference, int8 first, and the reason says how to measure
    plain = ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS)
    assert plain.image.artifact.precision == "int8"
    assert "no precision was timed here" in plain.image.reason and "edgeclip bench" in plain.image.reason
    plant_record(bundle, "image", {"fp32": 1.0, "int8": 3.0}, options)
    clf = ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS)
    assert clf.image.artifact.precision == "fp32"
    assert "fp32 1.00 ms, int8 3.00 ms" in clf.image.reason
    # other threads: another host key, so the record does not apply
    assert ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=2).image.artifact.precision == "int8"
    # an explicit precision is never overridden
    assert ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS,
                                   precision="int8").image.artifact.precision == "int8"
    # the other way round, the record picks int8
    plant_record(bundle, "image", {"fp32": 3.0, "int8": 1.0}, options)
    assert ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS).image.artifact.precision == "int8"


def test_a_record_applies_only_to_the_artifacts_it_measured(two_precisions: Path, timings: Path) -> None:
    bundle = Bundle.open(two_precisions)
    options = BackendOptions(threads=THREADS)
    arts = bundle.manifest.find("image", "onnx")
    plant_record(bundle, "image", {"fp32": 1.0, "int8": 3.0}, options)
    choice = recorded_choice(arts, "onnxruntime", options)
    assert choice is not None and choice.artifact.precision == "fp32"
    # a re-exported int8 (other bytes) is another comparison
    changed = [replace(a, files={k: "0" * 64 for k in a.files}) if a.precision == "int8" else a for a in arts]
    assert recorded_choice(changed, "onnxruntime", options) is None


def test_fastest_times_the_candidates_records_them_and_loads_the_quickest(two_precisions: Path,
                                                                         timings: Path) -> None:
    clf = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS, precision="fastest")
    bundle = Bundle.open(two_precisions)
    stored = _stored(timings, "onnxruntime", BackendOptions(threads=THREADS), bundle.manifest.find("image", "onnx"))
    assert stored["by"] == "load(precision='fastest')" and set(stored["ms"]) == {"fp32", "int8"}
    assert clf.image.artifact.precision == min(stored["ms"], key=stored["ms"].get)
    assert "measured by this load" in clf.image.reason
    # the next plain load follows the record
    again = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS)
    assert again.image.artifact.key == clf.image.artifact.key


def test_an_unreadable_timings_file_never_fails_a_load(two_precisions: Path, timings: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    for content in ("{not json", json.dumps({"format": 99, "hosts": {}}), json.dumps([1, 2])):
        timings.write_text(content)
        with caplog.at_level(logging.WARNING, logger="edgeclip.runtime.timings"):
            clf = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS)
        assert clf.image.artifact.precision == "int8"
        assert "ignoring the timing records" in caplog.text
        caplog.clear()
    # recording over a broken file starts it afresh
    plant_record(Bundle.open(two_precisions), "image", {"fp32": 1.0, "int8": 3.0}, BackendOptions(threads=THREADS))
    assert json.loads(timings.read_text())["format"] == 1
    assert timings_path() == timings


def test_cli_precision_fastest(two_precisions: Path, tmp_path: Path) -> None:
    path = tmp_path / "cli-timings.json"
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 20, 20)).save(image)
    r = run_cli("classify", str(two_precisions), str(image), "--backend", "onnxruntime", "--precision", "fastest",
                "--threads", str(THREADS), "--json", env={"EDGECLIP_TIMINGS": str(path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)
    stored = json.loads(path.read_text())["hosts"]
    assert len(stored) == 1
    (comparison,) = next(iter(stored.values())).values()  # the image tower's, timed by the CLI's load
    assert comparison["by"] == "load(precision='fastest')" and set(comparison["ms"]) == {"fp32", "int8"}


def test_a_difference_within_the_margin_keeps_the_backends_preference(two_precisions: Path, timings: Path) -> None:
    """The README's rule: another precision displaces the preferred one (int8) only when it ran
    more than 5 % faster in the recorded comparison."""
    bundle = Bundle.open(two_precisions)
    options = BackendOptions(threads=THREADS)
    plant_record(bundle, "image", {"fp32": 1.0, "int8": 1.04}, options)
    clf = ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS)
    assert clf.image.artifact.precision == "int8" and "within 5% of the fastest" in clf.image.reason
    plant_record(bundle, "image", {"fp32": 1.0, "int8": 1.06}, options)
    assert ZeroShotClassifier.load(bundle, backend="onnxruntime", threads=THREADS).image.artifact.precision == "fp32"


def test_no_home_folder_means_no_records_not_a_failed_load(two_precisions: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("EDGECLIP_TIMINGS")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with caplog.at_level(logging.WARNING, logger="edgeclip.runtime.timings"):
        clf = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS, precision="fastest")
    assert clf.image.artifact.precision in ("fp32", "int8")
    assert "could not record" in caplog.text  # the measurement still chose; only the record was lost


def test_a_timings_path_that_is_not_a_regular_file_is_neither_read_nor_replaced(
        two_precisions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGECLIP_TIMINGS naming a pipe (or a device such as /dev/null): reading it would wait forever
    and the atomic write would replace it with a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setenv("EDGECLIP_TIMINGS", str(fifo))
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(ZeroShotClassifier.load(
        two_precisions, backend="onnxruntime", threads=THREADS, precision="fastest").image.artifact.precision),
        daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done, "the load blocked on the pipe"
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_an_asked_precision_applies_to_the_text_tower_where_it_has_it(two_precisions: Path, tiny_checkpoint: Path,
                                                                      tmp_path: Path, timings: Path) -> None:
    # a record saying fp32 is slower must not matter: the precision was asked for
    plant_record(Bundle.open(two_precisions), "text", {"fp32": 3.0, "int8": 1.0}, BackendOptions(threads=THREADS))
    clf = ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS, precision="fp32")
    clf.embed_texts(["a red circle"])
    assert clf._text is not None and clf._text.artifact.precision == "fp32"
    # an int8 image tower beside an fp32-only text tower: the text tower's own choice, not an error
    image_int8 = tmp_path / "image-int8.edgeclip"
    shutil.copytree(two_precisions, image_int8)
    bundle = Bundle.open(image_int8)
    for a in bundle.manifest.find("text", "onnx", "int8"):
        bundle.manifest.artifacts.remove(a)
    bundle.save_manifest()
    clf = ZeroShotClassifier.load(image_int8, backend="onnxruntime", threads=THREADS, precision="int8")
    clf.set_labels(["circle", "square"])
    assert clf._text is not None and clf._text.artifact.precision == "fp32"


def test_the_file_keeps_the_newest_comparisons_only(two_precisions: Path, timings: Path) -> None:
    bundle = Bundle.open(two_precisions)
    arts = bundle.manifest.find("image", "onnx")
    options = BackendOptions(threads=THREADS)
    for i in range(timings_module.MAX_RECORDS + 3):  # each a distinct pair of artifacts, as after re-exports
        other = [replace(a, files={k: f"{i:064x}" for k in a.files}) if a.precision == "int8" else a for a in arts]
        record("onnxruntime", options, {a.key: (a, 1.0 + i) for a in other}, by="edgeclip bench")
    stored = json.loads(timings.read_text())["hosts"][host_key("onnxruntime", options)]
    assert len(stored) == timings_module.MAX_RECORDS
    kept = {e["ms"]["fp32"] for e in stored.values()}
    assert kept == {1.0 + i for i in range(3, timings_module.MAX_RECORDS + 3)}  # the three oldest dropped
    assert ZeroShotClassifier.load(two_precisions, backend="onnxruntime", threads=THREADS)  # still a usable file
