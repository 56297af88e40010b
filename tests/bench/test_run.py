"""`edgeclip bench` on the tiny bundle: report schema, outputs, compare gate, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeclip.bench.report import compare, load_report, to_csv, to_markdown
from edgeclip.bench.run import SCHEMA, BenchConfig, run_bench
from edgeclip.bundle import Bundle
from edgeclip.errors import ConfigError, ReportError
from tests.conftest import run_cli

ROW_FIELDS = {"key", "encoder", "backend", "precision", "batch_size", "mode", "median_ms", "p90_ms", "p99_ms",
              "mean_ms", "std_ms", "runs", "outliers_clipped", "throughput_per_s", "cold_start_ms", "size_mb",
              "rss_delta_mb", "ran_device", "requested_device", "precision_hint", "compute_layers", "float_layers",
              "fell_back_to_cpu", "peak_rss_mb"}


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tiny_checkpoint: Path) -> dict:  # type: ignore[type-arg]
    cfg = BenchConfig(bundle=tiny_bundle, checkpoint=tiny_checkpoint, batch_sizes=[1, 2], runs=6, warmup=1,
                      eval_data="builtin:shapes", eval_size=24, threads=1, label_classes=100)
    return run_bench(cfg, log=lambda _: None)


def test_report_schema_rows_and_baseline(report: dict) -> None:  # type: ignore[type-arg]
    assert report["schema"] == SCHEMA and report["schema_version"] == 2
    assert {"cpu", "cpu_flags", "cores", "threads", "os", "python", "packages"} <= set(report["machine"])
    keys = {r["key"] for r in report["rows"]}
    for bs in (1, 2):
        for impl in ("torch-fp32", "onnxruntime-fp32"):
            assert f"image/{impl}/b{bs}/model" in keys and f"text/{impl}/b{bs}/model" in keys
            assert f"image/{impl}/b{bs}/end_to_end" in keys
    for r in report["rows"]:
        assert set(r) >= ROW_FIELDS, r["key"]
        assert r["runs"] + r["outliers_clipped"] == 6
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.999
        assert r["speedup_vs_baseline"] > 0
    ort = next(r for r in report["rows"] if r["key"] == "image/onnxruntime-fp32/b1/model")
    assert ort["cosine_min"] >= 0.99999 and ort["cosine_ref"] == "torch-fp32"
    assert ort["top1_delta"] == 0.0 and ort["eval_images"] == 24  # identical numerics to torch
    e2e = next(r for r in report["rows"] if r["key"] == "image/onnxruntime-fp32/b1/end_to_end")
    assert e2e["end_to_end_over_model"] == pytest.approx(e2e["median_ms"] / next(
        r for r in report["rows"] if r["key"] == "image/onnxruntime-fp32/b1/model")["median_ms"], rel=0.01)


def test_rows_say_what_ran_them_and_their_peak_memory(report: dict) -> None:  # type: ignore[type-arg]
    for r in report["rows"]:
        assert r["ran_device"] == "CPU" and r["requested_device"] == "CPU" and not r["fell_back_to_cpu"], r["key"]
        assert r["peak_rss_mb"] > 0, r["key"]
    ort = [r for r in report["rows"] if r["backend"] == "onnxruntime"]
    assert all(r["providers"] == ["CPUExecutionProvider"] and r["compute_layers"]["float"] > 0 for r in ort)
    assert all(r["float_layers"] is None for r in ort)  # fp32 artifacts: no calibration record
    # torch loads the whole checkpoint (both towers, plus torch itself): more than one onnxruntime tower
    peaks = {(r["encoder"], r["backend"]): r["peak_rss_mb"] for r in report["rows"]}
    assert peaks[("image", "torch")] > peaks[("image", "onnxruntime")]


def test_camera_size_end_to_end_rows(report: dict) -> None:  # type: ignore[type-arg]
    by = {r["key"]: r for r in report["rows"]}
    for impl in ("torch-fp32", "onnxruntime-fp32"):
        model = by[f"image/{impl}/b1/model"]
        for size in ("1280x720", "4032x3024"):
            row = by[f"image/{impl}/b1/end_to_end_{size}"]
            assert row["end_to_end_over_model"] == pytest.approx(row["median_ms"] / model["median_ms"], rel=0.01)
        assert f"image/{impl}/b2/end_to_end_1280x720" not in by  # camera frames: batch 1
    # the edgeclip rows decode through the classifier, the way the bundle was validated; torch as it trained
    assert {r["decode"] for r in report["rows"] if r["mode"] != "model" and r["backend"] == "torch"} == {"exact"}
    assert ({r["decode"] for r in report["rows"] if r["mode"] != "model" and r["backend"] == "onnxruntime"}
            == {Bundle.open(report["bundle"]["path"]).manifest.preprocess.decode})
    # decoding a 12 MP photo costs more than a 720p frame, with the same model after it
    assert (by["image/onnxruntime-fp32/b1/end_to_end_4032x3024"]["median_ms"]
            > by["image/onnxruntime-fp32/b1/end_to_end_1280x720"]["median_ms"])


def test_labels_table(report: dict) -> None:  # type: ignore[type-arg]
    rows = {r["key"]: r for r in report["labels"]}
    assert set(rows) == {"text/onnxruntime-fp32/labels"}  # torch is the baseline, not a device backend
    r = rows["text/onnxruntime-fp32/labels"]
    assert (r["classes"], r["templates"], r["prompts"]) == (100, 7, 700)
    assert r["prompts_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["ran_device"] == "CPU"
    md = to_markdown(report)
    assert "Label sets: 100 classes x 7 templates" in md and "| text/onnxruntime-fp32/labels | CPU |" in md


def test_an_accelerator_that_left_the_cpu_to_run_is_flagged(tiny_bundle: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here: nothing falls back")
    cfg = BenchConfig(bundle=tiny_bundle, baseline="none", batch_sizes=[1], runs=3, warmup=0, encoders=["image"],
                      end_to_end=False, memory=False, device="CUDA")
    rep = run_bench(cfg, log=lambda _: None)
    (row,) = rep["rows"]
    assert row["requested_device"] == "CUDA" and row["ran_device"] == "CPU" and row["fell_back_to_cpu"]
    assert any("CUDA was asked for, but the CPU ran it" in w for w in rep["warnings"])


def test_markdown_and_csv_have_every_row(report: dict) -> None:  # type: ignore[type-arg]
    md, csv_text = to_markdown(report), to_csv(report)
    for r in report["rows"]:
        assert f"| {r['key']} |" in md
    assert len(csv_text.strip().splitlines()) == len(report["rows"]) + 1


def test_compare_gate(report: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    same_deltas, failed = compare(report, report, 0.1)
    assert not failed and all(d["change"] == 0 for d in same_deltas)
    faster_old = json.loads(json.dumps(report))
    for r in faster_old["rows"]:
        if r["backend"] != "torch":
            r["speedup_vs_baseline"] *= 2  # the old rows were twice as fast as torch: a 100 % regression
    deltas, failed = compare(report, faster_old, 0.1)
    assert failed and all(d["regressed"] == (not d["key"].split("/")[1].startswith("torch")) for d in deltas)


def test_cli_writes_every_output_and_gates(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "csv", "png")}
    args = ["bench", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint), "--batch-sizes", "1", "--runs", "5",
            "--warmup", "1", "--encoders", "image", "--threads", "1", "--no-memory", "--camera-sizes", "1280x720"]
    proc = run_cli(*args, "--json", str(out["json"]), "--markdown", str(out["md"]), "--csv", str(out["csv"]),
                   "--plot", str(out["png"]))
    assert proc.returncode == 0, proc.stderr
    assert load_report(out["json"])["rows"]
    assert out["md"].read_text().startswith("# edgeclip bench")
    header = out["csv"].read_text().splitlines()[0].split(",")
    assert {"key", "median_ms", "p90_ms", "speedup_vs_baseline"} <= set(header)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out["png"].stat().st_size > 5000
    old = json.loads(out["json"].read_text())
    for r in old["rows"]:
        if r["backend"] != "torch":
            r["speedup_vs_baseline"] *= 10
    (tmp_path / "fast.json").write_text(json.dumps(old))
    proc = run_cli(*args, "--compare", str(tmp_path / "fast.json"), "--max-regression", "0.5")
    assert proc.returncode == 1 and "REGRESSION" in proc.stdout and "Traceback" not in proc.stderr


def test_missing_backend_is_skipped_with_a_reason(tiny_bundle: Path) -> None:
    cfg = BenchConfig(bundle=tiny_bundle, backends=["onnxruntime", "openvino"], baseline="none", batch_sizes=[1],
                      runs=3, warmup=0, encoders=["image"], end_to_end=False, memory=False)
    rep = run_bench(cfg, log=lambda _: None)
    assert {r["backend"] for r in rep["rows"]} == {"onnxruntime"}
    assert any(s["row"] == "openvino" and "no artifact" in s["reason"] for s in rep["skipped"])


def test_bad_input(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch-sizes"):
        BenchConfig(bundle=tiny_bundle, batch_sizes=[0])
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    with pytest.raises(ReportError, match="cannot read bench report"):
        load_report(bad)
    # a v1 report labelled bf16 OpenVINO rows as fp32: comparing against it is refused, with a fix
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"schema": "edgeclip-bench", "schema_version": 1, "rows": []}))
    with pytest.raises(ReportError, match="v1 bench report") as err:
        load_report(v1)
    assert "regenerate" in (err.value.fix or "")
    proc = run_cli("bench", str(tiny_bundle), "--batch-sizes", "0", "--baseline", "none")
    assert proc.returncode != 0 and "Error:" in proc.stderr and "Traceback" not in proc.stderr
    for baseline, says in ((bad, "cannot read bench report"), (tmp_path / "missing.json", "cannot read bench report"),
                           (v1, "v1 bench report")):  # a bad file, not a bad argument: exit 1
        proc = run_cli("bench", str(tiny_bundle), "--compare", str(baseline), "--baseline", "none")
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_int8_rows_count_the_layers_the_manifest_left_in_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """An INT8 row carries its calibration record's float layers, and the integer kernels that ran."""
    from edgeclip.export.driver import export_bundle

    out = tmp_path / "int8.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8-dynamic", encoders=["image"])
    (art,) = Bundle.open(out).manifest.artifacts
    assert art.calibration is not None
    cfg = BenchConfig(bundle=out, baseline="none", batch_sizes=[1], runs=3, warmup=0, encoders=["image"],
                      end_to_end=False, memory=False)
    (row,) = run_bench(cfg, log=lambda _: None)["rows"]
    assert row["precision"] == "int8-dynamic"
    assert row["float_layers"] == len(art.calibration.excluded_layers)
    assert row["compute_layers"].get("int8", 0) > 0


def test_a_uint8_input_artifact_is_benched_on_the_pixels_its_graph_normalises(tiny_checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    """--image-input uint8: model rows get the uint8 pixels the float probes came from (so the same
    embeddings as torch), and end-to-end rows go through the classifier, which feeds it uint8 itself."""
    from edgeclip.export.driver import export_bundle

    out = tmp_path / "u8.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="fp32", encoders=["image"],
                  options={"image_input": "uint8"})
    cfg = BenchConfig(bundle=out, checkpoint=tiny_checkpoint, batch_sizes=[1], runs=3, warmup=1, threads=1,
                      encoders=["image"], camera_sizes=[], label_classes=0)
    rows = {r["key"]: r for r in run_bench(cfg, log=lambda _: None)["rows"]}
    assert rows["image/onnxruntime-fp32/b1/model"]["cosine_min"] >= 0.99999
    assert rows["image/onnxruntime-fp32/b1/end_to_end"]["decode"] is not None  # the classifier's path, not torch's
    assert rows["image/onnxruntime-fp32/b1/model"]["peak_rss_mb"] > 0  # its fresh-process probe fed it uint8 too
    # the end-to-end call is the classifier's, on the loaded encoder (the torch path would feed it floats)
    from edgeclip.bench.run import _end_to_end, _load_candidate
    from edgeclip.runtime.backends.base import BackendOptions

    bundle = Bundle.open(out)
    cand = _load_candidate(bundle, bundle.manifest.artifacts[0], "onnxruntime", BackendOptions(threads=1),
                           np.zeros((1, 3, *[bundle.manifest.preprocess.image_size] * 2), np.float32))
    call = _end_to_end(cand, [], bundle, None)
    assert getattr(call.func, "__self__", None) is not None and call.func.__self__.image is cand.loaded
