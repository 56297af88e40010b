"""Break review of the CLI front end: `edgeclip bench` does what its flags say, its files agree, and bad
input ends in `Error: ...` with the documented exit code (1 bad file, 2 bad argument), no traceback."""

from __future__ import annotations

import json
from pathlib import Path

from edgeclip.bench.report import load_report, to_markdown
from tests.conftest import run_cli

QUICK = ("--baseline", "none", "--encoders", "image", "--batch-sizes", "1", "--runs", "3", "--warmup", "0",
         "--threads", "1", "--label-classes", "0")


def test_bench_flags_reach_the_run_and_the_markdown_is_the_json(tiny_bundle: Path, tmp_path: Path) -> None:
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    proc = run_cli("bench", str(tiny_bundle), *QUICK, "--no-end-to-end", "--no-memory", "--camera-sizes", "",
                   "--json", str(js), "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    report = load_report(js)
    assert [r["key"] for r in report["rows"]] == ["image/onnxruntime-fp32/b1/model"]  # --no-end-to-end, b1, image
    (row,) = report["rows"]
    assert row["peak_rss_mb"] is None and row["runs"] == 3  # --no-memory; --runs
    assert report["config"]["memory"] is False and report["config"]["end_to_end"] is False
    assert report["config"]["threads"] == 1 and report["machine"]["threads"] == 1
    assert md.read_text() == to_markdown(report)


def test_bench_bad_arguments_exit_2_and_bad_files_exit_1(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = run_cli("bench", str(tiny_bundle), *QUICK[:-2], "--batch-sizes", "1,x")
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and "--batch-sizes" in proc.stderr
    proc = run_cli("bench", str(tiny_bundle), "--baseline", "none", "--encoders", "audio")
    assert proc.returncode == 2 and "unknown encoder 'audio'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("bench", str(tmp_path / "nope.edgeclip"), "--baseline", "none")
    assert proc.returncode == 1 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr


def test_bench_compare_prints_each_row_and_passes_when_nothing_regressed(tiny_bundle: Path, tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    args = ("bench", str(tiny_bundle), *QUICK, "--no-end-to-end", "--no-memory", "--camera-sizes", "")
    assert run_cli(*args, "--json", str(js)).returncode == 0
    slow = json.loads(js.read_text())
    for r in slow["rows"]:
        r["median_ms"] *= 1000  # the old run was far slower: today cannot be a regression
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    proc = run_cli(*args, "--compare", str(tmp_path / "slow.json"))
    assert proc.returncode == 0, proc.stderr
    assert "image/onnxruntime-fp32/b1/model raw ms" in proc.stdout and "REGRESSION" not in proc.stdout
