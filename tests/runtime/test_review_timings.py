"""Review of the precision choice by measured latency (runtime/timings.py): the ways it could pick
the wrong artifact, fail a load or a bench, or leave a bad timings file.

Real bundles (the tiny model exported for onnxruntime in fp32 and int8, OpenVINO in fp32 and fp16),
real backends,
the real timings file (EDGECLIP_TIMINGS, a temp file per test). Latencies that a test plants are the
input under test; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgeclip.bench.run import BenchConfig, run_bench
from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError
from edgeclip.export.driver import export_bundle
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime import timings as timings_module
from edgeclip.runtime.backends.base import BackendOptions
from edgeclip.runtime.signing import generate_keys, sign_bundle
from edgeclip.runtime.timings import comparison_key, host_key, recorded_choice, timings_path
from tests.conftest import run_cli
from tests.runtime.conftest import plant_record

CALIB = {"calib": "builtin:shapes", "calib_size": 32}
THREADS = 1
OPTIONS = BackendOptions(threads=THREADS)
LOGGER = "edgeclip.runtime.timings"


@pytest.fixture(scope="module")
def bundle_path(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's image and text towers for onnxruntime in fp32 and int8, and for OpenVINO in
    fp32 and fp16 (cheaper to export than int8; the choice treats every precision alike)."""
    out = tmp_path_factory.mktemp("review-timings") / "b.edgeclip"
    shutil.copytree(tiny_bundle, out)  # onnx fp32, shared with the rest of the suite
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("calib-cache")))
        export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8", options=CALIB)
        export_bundle(tiny_checkpoint, out, targets=["openvino"], precision=["fp32", "fp16"])
    return out


def _plant(bundle: Bundle, encoder: str, ms: dict[str, float], options: BackendOptions = OPTIONS,
           backend: str = "onnxruntime") -> None:
    plant_record(bundle, encoder, ms, options, backend)


def _load(bundle: Path | Bundle, **kw: Any) -> ZeroShotClassifier:
    return ZeroShotClassifier.load(bundle, **{"backend": "onnxruntime", "threads": THREADS, "labels": None, **kw})


README_MARGIN = 0.05  # README, Runtime: another precision must have run "more than 5 % faster"
README_PREFERENCE = ("int8", "fp16", "fp32")  # README, Runtime: "the backend's preference (int8 first"


def _fastest(ms: dict[str, float]) -> set[str]:
    """The precisions the README's rule picks from a stored comparison: the preferred one unless
    another ran more than 5 % faster (several on a tie after the file's rounding)."""
    preferred = next(p for p in (*README_PREFERENCE, *sorted(ms)) if p in ms)
    best = min(ms.values())
    return {p for p, t in ms.items() if t == best} if best < (1 - README_MARGIN) * ms[preferred] else {preferred}


def _entry(path: Path, backend: str, options: BackendOptions, artifacts: list[Any]) -> dict[str, Any]:
    return dict(json.loads(path.read_text())["hosts"][host_key(backend, options)][comparison_key(artifacts)])


# ---- a record made in one process applies in the next ------------------------------------------

FRESH_LOAD = (
    "import sys\n"
    "from edgeclip.runtime import ZeroShotClassifier\n"
    "c = ZeroShotClassifier.load(sys.argv[1], backend='onnxruntime', threads=1, labels=None)\n"
    "print(c.image.artifact.precision)\n"
    "print(c.image.reason)\n"
)


def test_a_record_from_one_process_applies_in_a_fresh_one(bundle_path: Path, timings: Path) -> None:
    """`edgeclip classify --precision fastest` (or `edgeclip bench`) records in one process; the
    user's next `classify` runs in another. The host key must not depend on whether the SDK happened
    to be imported when it was computed (before any backend is created, it is not)."""
    image = timings.parent / "x.png"
    Image.new("RGB", (64, 64), (200, 20, 20)).save(image)
    r = run_cli("classify", str(bundle_path), str(image), "--backend", "onnxruntime", "--precision", "fastest",
                "--threads", str(THREADS), "--json")
    assert r.returncode == 0, r.stderr
    stored = _entry(timings, "onnxruntime", OPTIONS, Bundle.open(bundle_path).manifest.find("image", "onnx"))
    out = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(bundle_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    precision, reason = out.stdout.splitlines()
    assert "measured by load(precision='fastest')" in reason, reason
    assert precision in _fastest(stored["ms"])


# ---- the timings location may be unusable: a load or a bench still works ------------------------

def _unusable_locations(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "a-dir").mkdir()
    # too long a name: stat() fails with an error that Path.is_file() does not swallow, as EACCES
    # does for a user without access to the folder (these tests may run as root, which has it)
    return {"a folder": tmp_path / "a-dir", "under a file": a_file / "timings.json",
            "a name too long": tmp_path / ("x" * 300) / "timings.json"}


@pytest.mark.parametrize("where", ["a folder", "under a file", "a name too long"])
def test_an_unusable_timings_location_never_fails_a_load(bundle_path: Path, tmp_path: Path, where: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EDGECLIP_TIMINGS", str(_unusable_locations(tmp_path)[where]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _load(bundle_path).image.artifact.precision == "int8"  # no record: the preference
        fastest = _load(bundle_path, precision="fastest")  # times, then cannot record: a warning at most
    assert fastest.image.artifact.precision in ("fp32", "int8")
    assert "measured by this load" in fastest.image.reason
    assert "could not record" in caplog.text


def test_an_unwritable_timings_location_never_fails_bench(bundle_path: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EDGECLIP_TIMINGS", str(_unusable_locations(tmp_path)["a folder"]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        report = _bench(bundle_path, backends=["onnxruntime"])
    assert [r for r in report["rows"] if r["batch_size"] == 1]  # the report survives
    assert report["timings_recorded"] == []  # nothing claims a record that was never written
    assert "could not record" in caplog.text


# ---- malformed records: valid JSON of the wrong shape -----------------------------------------

def _file_with(bundle: Bundle, entry: Any = None, host: Any = None) -> dict[str, Any]:
    """A timings file whose record for the image artifacts under OPTIONS is `entry`, or whose host
    record is `host`."""
    hk = host_key("onnxruntime", OPTIONS)
    ck = comparison_key(bundle.manifest.find("image", "onnx"))
    return {"format": 1, "hosts": {hk: host if host is not None else {ck: entry}}}


GOOD = {"measured": "2026-01-01T00:00:00+00:00", "by": "edgeclip bench"}
MALFORMED: dict[str, dict[str, Any]] = {
    "host is a list": {"host": []},
    "host is a string": {"host": "x"},
    "entry is a list": {"entry": [1, 2]},
    "entry lacks by/measured": {"entry": {"ms": {"fp32": 1.0, "int8": 3.0}}},
    "ms is a list": {"entry": {**GOOD, "ms": [1.0, 3.0]}},
    "ms lacks a precision": {"entry": {**GOOD, "ms": {"fp32": 1.0}}},
    "ms is NaN": {"entry": {**GOOD, "ms": {"fp32": math.nan, "int8": 3.0}}},
    "ms is infinite": {"entry": {**GOOD, "ms": {"fp32": 1.0, "int8": math.inf}}},
    "ms is negative": {"entry": {**GOOD, "ms": {"fp32": -1.0, "int8": 3.0}}},
    "ms is zero": {"entry": {**GOOD, "ms": {"fp32": 0, "int8": 3.0}}},
    "ms is a bool": {"entry": {**GOOD, "ms": {"fp32": True, "int8": 3.0}}},
    "ms is a word": {"entry": {**GOOD, "ms": {"fp32": "fast", "int8": 3.0}}},
    "ms is null": {"entry": {**GOOD, "ms": {"fp32": None, "int8": 3.0}}},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_record_is_ignored_and_replaced(bundle_path: Path, timings: Path, case: str) -> None:
    bundle = Bundle.open(bundle_path)
    # json.dumps writes NaN and Infinity, which json.loads (and so the runtime) reads back
    timings.write_text(json.dumps(_file_with(bundle, **MALFORMED[case])))
    clf = _load(bundle)  # must not raise
    assert clf.image.artifact.precision == "int8", clf.image.reason  # no usable record: the preference
    _plant(bundle, "image", {"fp32": 1.0, "int8": 3.0})  # recording over it must not raise either
    assert _load(bundle).image.artifact.precision == "fp32"


def test_a_deeply_nested_timings_file_never_fails_a_load(bundle_path: Path, timings: Path) -> None:
    timings.write_text("[" * 100_000 + "]" * 100_000)  # json.loads raises RecursionError, not ValueError
    assert _load(bundle_path).image.artifact.precision == "int8"


# ---- concurrency: records from several threads, read meanwhile ---------------------------------

def test_concurrent_records_leave_a_whole_file(bundle_path: Path, timings: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Lost updates are tolerable; a half-written file (seen by a reader or left behind) is not."""
    bundle = Bundle.open(bundle_path)
    arts = bundle.manifest.find("image", "onnx")
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(threads: int) -> None:
        try:
            for i in range(40):
                _plant(bundle, "image", {"fp32": 1.0 + i, "int8": 100.0}, BackendOptions(threads=threads))
        except BaseException as e:  # any failure in the thread fails the test, below
            errors.append(e)

    def read() -> None:
        try:
            while not stop.is_set():
                recorded_choice(arts, "onnxruntime", BackendOptions(threads=1))
        except BaseException as e:  # any failure in the thread fails the test, below
            errors.append(e)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        writers = [threading.Thread(target=write, args=(n,)) for n in (1, 2, 3)]
        reader = threading.Thread(target=read)
        for t in [*writers, reader]:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        reader.join()
    assert not errors, errors
    assert "ignoring the timing records" not in caplog.text  # no reader saw a half-written file
    data = json.loads(timings.read_text())
    assert data["format"] == 1 and data["hosts"]
    assert not list(timings.parent.glob(".timings.json.*"))  # no temp file left behind


# ---- records that must not apply --------------------------------------------------------------

def test_records_apply_only_to_their_own_settings(bundle_path: Path, timings: Path) -> None:
    bundle = Bundle.open(bundle_path)
    arts = bundle.manifest.find("image", "onnx")
    _plant(bundle, "image", {"fp32": 1.0, "int8": 3.0})
    assert _load(bundle).image.artifact.precision == "fp32"
    for other in (BackendOptions(threads=2), BackendOptions(threads=THREADS, device="CUDA"),
                  BackendOptions(threads=THREADS, precision_hint="f32")):
        assert recorded_choice(arts, "onnxruntime", other) is None, other
    # a record made under another version of the SDK (before an upgrade): not this host's
    timings.unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timings_module, "sdk_version", lambda module: "0.0.1")
        _plant(bundle, "image", {"fp32": 1.0, "int8": 3.0})
    assert " | onnxruntime 0.0.1 | " in next(iter(json.loads(timings.read_text())["hosts"]))
    assert _load(bundle).image.artifact.precision == "int8"
    # a precision added to the bundle after the record (fp16), or a record of fewer artifacts
    # (bench --precisions): another comparison
    _plant(bundle, "image", {"fp32": 1.0, "int8": 3.0})
    fp32 = next(a for a in arts if a.precision == "fp32")
    fp16 = replace(fp32, precision="fp16", files={k: "1" * 64 for k in fp32.files})
    assert recorded_choice([*arts, fp16], "onnxruntime", OPTIONS) is None
    assert recorded_choice(arts, "onnxruntime", OPTIONS) is not None


def test_a_tie_in_a_record_keeps_the_backends_preference(bundle_path: Path, timings: Path) -> None:
    """Equal latencies are no evidence either way: the backend's order (int8 first) decides, not the
    order the artifacts happen to be listed in the manifest (fp32 was exported first)."""
    bundle = Bundle.open(bundle_path)
    assert [a.precision for a in bundle.manifest.find("image", "onnx")] == ["fp32", "int8"]
    _plant(bundle, "image", {"fp32": 2.0, "int8": 2.0})
    assert _load(bundle).image.artifact.precision == "int8"


# ---- precision="fastest" ----------------------------------------------------------------------

def test_fastest_verifies_each_candidate_before_running_it(bundle_path: Path, tmp_path: Path,
                                                           timings: Path) -> None:
    """A signed bundle under a trust policy whose fp32 file was changed after signing: a plain load
    never opens it (int8 is preferred); `fastest` opens every candidate, so it must check each hash."""
    copy = tmp_path / "signed.edgeclip"
    shutil.copytree(bundle_path, copy)
    _, public, _ = generate_keys(tmp_path / "keys")
    sign_bundle(copy, tmp_path / "keys" / "edgeclip-signing.key")
    fp32 = Bundle.open(copy).manifest.find("image", "onnx", "fp32")[0]
    with open(copy / fp32.main_file, "ab") as f:
        f.write(b"\0")
    assert _load(copy, trusted_keys=[public]).image.artifact.precision == "int8"
    with pytest.raises(BundleError, match="does not match its sha256"):
        _load(copy, trusted_keys=[public], precision="fastest")
    assert not timings.exists()  # nothing was timed


def test_fastest_on_openvino_and_the_text_tower(bundle_path: Path, timings: Path) -> None:
    bundle = Bundle.open(bundle_path)
    clf = _load(bundle, backend="openvino", precision="fastest")
    stored = _entry(timings, "openvino", OPTIONS, bundle.manifest.find("image", "openvino"))
    assert clf.image.artifact.precision in _fastest(stored["ms"])
    # the classifier was asked for the fastest precision: its text tower, loaded on first use, too
    clf.embed_texts(["a red circle"])
    assert clf._text is not None and "measured by this load" in clf._text.reason, clf._text.reason
    stored = _entry(timings, "openvino", OPTIONS, bundle.manifest.find("text", "openvino"))
    assert clf._text.artifact.precision in _fastest(stored["ms"])


def test_cli_embed_text_precision_fastest_times_the_text_tower(bundle_path: Path, timings: Path,
                                                               tmp_path: Path) -> None:
    r = run_cli("embed", str(bundle_path), "--text", "a red circle", "--backend", "onnxruntime",
                "--precision", "fastest", "--out", str(tmp_path / "e.npy"))
    assert r.returncode == 0, r.stderr
    text = Bundle.open(bundle_path).manifest.find("text", "onnx")
    hosts = json.loads(timings.read_text())["hosts"]
    assert any(comparison_key(text) in host for host in hosts.values()), hosts


def test_fastest_with_one_precision_times_nothing(tiny_bundle: Path, timings: Path) -> None:
    clf = _load(tiny_bundle, precision="fastest")
    assert clf.image.artifact.precision == "fp32" and "the only precision" in clf.image.reason
    assert not timings.exists()


# ---- edgeclip bench ---------------------------------------------------------------------------

def _bench(bundle: Path, **kw: Any) -> dict[str, Any]:
    cfg = {"backends": ["openvino"], "encoders": ["image"], "batch_sizes": [1], "runs": 3, "warmup": 0,
           "threads": THREADS, "baseline": "none", "end_to_end": False, "memory": False, "label_classes": 0, **kw}
    return run_bench(BenchConfig(bundle=bundle, **cfg), log=lambda _: None)


def test_bench_at_batch_8_only_records_nothing(bundle_path: Path, timings: Path) -> None:
    report = _bench(bundle_path, backends=["onnxruntime"], batch_sizes=[8])
    assert report["timings_recorded"] == [] and not timings.exists()


def test_bench_records_openvino_per_hint_and_a_plain_load_takes_the_default_hint(bundle_path: Path,
                                                                                 timings: Path) -> None:
    """On a CPU whose OpenVINO default is bf16, bench times each artifact under the default hint
    and under f32: two comparisons. A plain load (hint None: the device default) follows the first."""
    report = _bench(bundle_path)
    rows = [r for r in report["rows"] if r["mode"] == "model" and r["batch_size"] == 1]
    bf16 = [r for r in rows if "(bf16-hint)" in r["label"]]  # the device default, where it is bf16
    f32 = [r for r in rows if r not in bf16]
    arts = Bundle.open(bundle_path).manifest.find("image", "openvino")
    plain = _entry(timings, "openvino", OPTIONS, arts)
    assert plain["ms"] == pytest.approx({r["precision"]: r["median_ms"] for r in bf16 or f32}, abs=1e-3)
    if bf16:
        forced = _entry(timings, "openvino", replace(OPTIONS, precision_hint="f32"), arts)
        assert forced["ms"] == pytest.approx({r["precision"]: r["median_ms"] for r in f32}, abs=1e-3)
    clf = _load(bundle_path, backend="openvino")
    assert clf.image.artifact.precision in _fastest(plain["ms"])
    assert "measured by edgeclip bench" in clf.image.reason
    assert timings_path() == timings
