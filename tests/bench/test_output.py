"""`edgeclip bench` output for people (issue 21 item 8): a terminal table that fits 80 columns with the
CPU flags intact, and a `--compare` gate judged on ratios to the torch baseline of the same run."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bench.report import compare, print_table
from edgeclip.bench.run import BenchConfig, run_bench
from tests.conftest import run_cli

MS_FIELDS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")
DRIFT = 1.4  # issue 21: the torch baseline itself drifted 27-47 % between short runs


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tiny_checkpoint: Path) -> dict[str, Any]:
    cfg = BenchConfig(bundle=tiny_bundle, checkpoint=tiny_checkpoint, batch_sizes=[1, 8], runs=3, warmup=1,
                      eval_data="builtin:shapes", eval_size=24, threads=1)
    return run_bench(cfg, log=lambda _: None)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich may wrap a long header line at any space


def _check_terminal_text(text: str, report: dict[str, Any]) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert f"[{' '.join(report['machine']['cpu_flags'])}]" in _flat(text)  # not eaten as rich markup
    for r in report["rows"]:
        assert f"{r['encoder']}/{r['label']}" in text


def test_terminal_table_fits_80_columns(report: dict[str, Any]) -> None:
    from rich.console import Console

    buf = io.StringIO()
    print_table(report, Console(width=80, file=buf, color_system=None))
    text = buf.getvalue()
    _check_terminal_text(text, report)
    for r in report["rows"]:
        if r["mode"] == "model":
            assert f"{r['median_ms']:.3f}" in text and f"{r['speedup_vs_baseline']:.2f}" in text


def test_cli_table_at_columns_80(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = run_cli("bench", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint), "--batch-sizes", "1,8",
                   "--runs", "3", "--warmup", "1", "--threads", "1", "--eval", "builtin:shapes", "--json", str(out),
                   env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    _check_terminal_text(proc.stdout, json.loads(out.read_text()))


def test_compare_ignores_uniform_drift_and_catches_ratio_regressions(report: dict[str, Any]) -> None:
    drifted = copy.deepcopy(report)  # the old run: every row 40 % faster, the same ratios to torch
    for r in drifted["rows"]:
        for k in MS_FIELDS:
            r[k] /= DRIFT
    deltas, failed = compare(report, drifted, 0.1)
    assert not failed and deltas and all(d["basis"] == "speedup_vs_baseline" and d["change"] == 0 for d in deltas)

    better = copy.deepcopy(report)  # the old run: onnxruntime 1.5x as fast relative to torch, same medians
    for r in better["rows"]:
        if r["backend"] == "onnxruntime":
            r["speedup_vs_baseline"] *= 1.5
    deltas, failed = compare(report, better, 0.1)
    assert failed
    assert {d["key"] for d in deltas if d["regressed"]} == {r["key"] for r in report["rows"]
                                                           if r["backend"] == "onnxruntime"}
    assert all(d["change"] == pytest.approx(0.5, abs=0.01) for d in deltas if d["regressed"])


def test_compare_without_baseline_falls_back_to_medians(report: dict[str, Any]) -> None:
    new, old = copy.deepcopy(report), copy.deepcopy(report)
    for rep in (new, old):
        rep["rows"] = [r for r in rep["rows"] if r["backend"] != "torch"]
        for r in rep["rows"]:
            r.pop("speedup_vs_baseline")
    for r in old["rows"]:
        r["median_ms"] /= DRIFT
    deltas, failed = compare(new, old, 0.1)
    assert failed and all(d["basis"] == "median_ms" and d["regressed"] for d in deltas)


def test_cli_compare_exit_codes(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    # few cheap rows, many samples: the ratio to torch is steady between two runs
    args = ["bench", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint), "--encoders", "image",
            "--backends", "onnxruntime", "--no-end-to-end", "--batch-sizes", "1", "--runs", "60", "--warmup", "3",
            "--threads", "1"]
    first = tmp_path / "first.json"
    assert run_cli(*args, "--json", str(first)).returncode == 0
    drifted, better = json.loads(first.read_text()), json.loads(first.read_text())
    for r in drifted["rows"]:
        for k in MS_FIELDS:
            r[k] /= DRIFT
    for r in better["rows"]:
        if r["backend"] == "onnxruntime":
            r["speedup_vs_baseline"] *= 2
    (tmp_path / "drifted.json").write_text(json.dumps(drifted))
    (tmp_path / "better.json").write_text(json.dumps(better))

    proc = run_cli(*args, "--compare", str(tmp_path / "drifted.json"), "--max-regression", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x torch" in proc.stdout and "REGRESSION" not in proc.stdout

    proc = run_cli(*args, "--compare", str(tmp_path / "better.json"), "--max-regression", "0.2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "image/onnxruntime-fp32/b1/model" in proc.stdout and "REGRESSION" in proc.stdout
    assert "speed-up over the torch baseline" in proc.stderr


def test_help_states_the_compare_rule() -> None:
    from click.testing import CliRunner

    from edgeclip.cli import cli

    text = _flat(CliRunner().invoke(cli, ["bench", "--help"], prog_name="edgeclip", terminal_width=200).output)
    assert "speedup_vs_baseline" in text and "not on raw medians" in text
