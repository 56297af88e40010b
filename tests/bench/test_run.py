"""`edgeclip bench` on the tiny bundle: report schema, outputs, compare gate, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.bench.report import compare, load_report, to_csv, to_markdown
from edgeclip.bench.run import SCHEMA, BenchConfig, run_bench
from edgeclip.errors import ConfigError
from tests.conftest import run_cli

ROW_FIELDS = {"key", "encoder", "backend", "precision", "batch_size", "mode", "median_ms", "p90_ms", "p99_ms",
              "mean_ms", "std_ms", "runs", "outliers_clipped", "throughput_per_s", "cold_start_ms", "size_mb",
              "rss_delta_mb"}


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tiny_checkpoint: Path) -> dict:  # type: ignore[type-arg]
    cfg = BenchConfig(bundle=tiny_bundle, checkpoint=tiny_checkpoint, batch_sizes=[1, 2], runs=6, warmup=1,
                      eval_data="builtin:shapes", eval_size=24, threads=1)
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
            "--warmup", "1", "--encoders", "image", "--threads", "1"]
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
                      runs=3, warmup=0, encoders=["image"], end_to_end=False)
    rep = run_bench(cfg, log=lambda _: None)
    assert {r["backend"] for r in rep["rows"]} == {"onnxruntime"}
    assert any(s["row"] == "openvino" and "no artifact" in s["reason"] for s in rep["skipped"])


def test_bad_input(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch-sizes"):
        BenchConfig(bundle=tiny_bundle, batch_sizes=[0])
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read bench report"):
        load_report(bad)
    # a v1 report labelled bf16 OpenVINO rows as fp32: comparing against it is refused, with a fix
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"schema": "edgeclip-bench", "schema_version": 1, "rows": []}))
    with pytest.raises(ConfigError, match="v1 bench report") as err:
        load_report(v1)
    assert "regenerate" in (err.value.fix or "")
    proc = run_cli("bench", str(tiny_bundle), "--batch-sizes", "0", "--baseline", "none")
    assert proc.returncode != 0 and "Error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("bench", str(tiny_bundle), "--compare", str(bad), "--baseline", "none")
    assert proc.returncode != 0 and "cannot read bench report" in proc.stderr and "Traceback" not in proc.stderr
