"""Break review of the bench layer: the statistics, ratios, gate and reports say what was measured.

Each test here went red under a deliberate break of the code it covers (median -> mean, ratio
inverted, wrong row as reference, interleaving removed, markdown dropping what JSON has)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeclip.bench.report import compare, to_markdown
from edgeclip.bench.run import BenchConfig, _ratios, run_bench
from edgeclip.bench.stats import Timing, interleave


def test_summary_is_the_median_and_throughput_follows_it() -> None:
    # five samples (too few to clip): median 3, mean 12
    s = Timing.from_samples([1.0, 2.0, 3.0, 4.0, 50.0]).summary(batch_size=4)
    assert s["median_ms"] == 3.0 and s["mean_ms"] == 12.0
    assert s["throughput_per_s"] == pytest.approx(1000 * 4 / 3.0, rel=1e-3)
    assert s["p90_ms"] == pytest.approx(float(np.percentile([1, 2, 3, 4, 50], 90)))
    assert (s["runs"], s["outliers_clipped"]) == (5, 0)


def test_a_preempted_sample_is_clipped_and_counted() -> None:
    samples = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02, 1.0, 400.0]
    t = Timing.from_samples(samples)
    assert t.outliers == 1 and 400.0 not in t.samples_ms and len(t.samples_ms) == 9
    assert t.summary(1)["runs"] == 9 and t.summary(1)["outliers_clipped"] == 1


def test_interleave_round_robins_in_chunks_and_stops_at_runs() -> None:
    order: list[str] = []
    calls: dict[str, Callable[[], object]] = {k: partial(order.append, k) for k in ("a", "b", "c")}
    timings = interleave(calls, warmup=2, runs=4, min_time_s=None, chunk=2)
    warm, timed = order[:6], order[6:]
    assert warm == ["a", "a", "b", "b", "c", "c"]
    # round robin: a a b b c c a a b b c c -- never every sample of one row before the next
    assert timed == ["a", "a", "b", "b", "c", "c"] * 2
    assert {k: len(t.samples_ms) for k, t in timings.items()} == {"a": 4, "b": 4, "c": 4}


def test_interleave_keeps_exactly_runs_samples_when_chunks_overshoot() -> None:
    calls: dict[str, Callable[[], object]] = {"a": lambda: None, "b": lambda: None}
    timings = interleave(calls, warmup=0, runs=4, min_time_s=None, chunk=3)  # 6 taken, 4 kept
    assert all(len(t.samples_ms) + t.outliers == 4 for t in timings.values())


def _row(encoder: str, label: str, bs: int, mode: str, median: float) -> dict[str, Any]:
    return {"encoder": encoder, "label": label, "batch_size": bs, "mode": mode, "median_ms": median}


def test_ratios_divide_the_reference_by_the_row_of_the_same_encoder_batch_and_mode() -> None:
    rows = [_row("image", "torch-fp32", 1, "model", 10.0), _row("image", "onnxruntime-fp32", 1, "model", 4.0),
            _row("image", "openvino-fp32", 1, "model", 2.0),
            _row("image", "torch-fp32", 1, "end_to_end", 30.0),
            _row("image", "onnxruntime-fp32", 1, "end_to_end", 20.0),
            _row("image", "torch-fp32", 8, "model", 80.0), _row("image", "onnxruntime-fp32", 8, "model", 16.0),
            _row("text", "torch-fp32", 1, "model", 7.0), _row("text", "onnxruntime-fp32", 1, "model", 1.0)]
    _ratios(rows)
    by = {(r["encoder"], r["label"], r["batch_size"], r["mode"]): r for r in rows}
    ov = by[("image", "openvino-fp32", 1, "model")]
    assert ov["speedup_vs_baseline"] == 5.0 and ov["speedup_vs_onnxruntime_fp32"] == 2.0
    assert by[("image", "onnxruntime-fp32", 1, "end_to_end")]["speedup_vs_baseline"] == 1.5
    assert by[("image", "onnxruntime-fp32", 8, "model")]["speedup_vs_baseline"] == 5.0
    assert by[("text", "onnxruntime-fp32", 1, "model")]["speedup_vs_baseline"] == 7.0
    assert by[("image", "onnxruntime-fp32", 1, "end_to_end")]["end_to_end_over_model"] == 5.0
    assert by[("image", "torch-fp32", 1, "end_to_end")]["end_to_end_over_model"] == 3.0


def _gate_report(median: float, speedup: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": "image/onnxruntime-fp32/b1/model", "median_ms": median}
    if speedup is not None:
        row["speedup_vs_baseline"] = speedup
    return {"rows": [row]}


@pytest.mark.parametrize(("old", "new", "regressed"), [
    ((10.0, None), (13.0, None), True),    # 30 % slower in raw ms
    ((10.0, None), (7.0, None), False),    # faster in raw ms: never a regression
    ((10.0, None), (10.5, None), False),   # within 10 %
    ((10.0, 4.0), (20.0, 4.0), False),    # machine twice as slow, same ratio to torch
    ((10.0, 4.0), (10.0, 3.0), True),     # same ms, ratio to torch fell by a third
    ((10.0, 4.0), (10.0, 6.0), False),    # ratio improved
])
def test_compare_direction(old: tuple[float, float | None], new: tuple[float, float | None], regressed: bool) -> None:
    deltas, failed = compare(_gate_report(*new), _gate_report(*old), 0.1)
    (d,) = deltas
    assert d["regressed"] is regressed and failed is regressed
    assert d["basis"] == ("median_ms" if old[1] is None else "speedup_vs_baseline")


@pytest.fixture(scope="module")
def small_report(tiny_bundle: Path) -> dict[str, Any]:
    """No torch: the onnxruntime fp32 artifact is the reference (seconds, one process)."""
    cfg = BenchConfig(bundle=tiny_bundle, baseline="none", batch_sizes=[1, 2], runs=3, warmup=0, threads=1,
                      camera_sizes=[], memory=False, label_classes=0)
    return run_bench(cfg, log=lambda _: None)


def test_without_torch_the_fp32_artifact_is_the_reference(small_report: dict[str, Any]) -> None:
    rows = [r for r in small_report["rows"] if r["mode"] == "model"]
    assert {r["key"] for r in rows} == {f"{e}/onnxruntime-fp32/b{b}/model" for e in ("image", "text") for b in (1, 2)}
    for r in rows:
        assert r["cosine_ref"] == "onnxruntime-fp32" and r["cosine_min"] >= 0.99999
        assert "speedup_vs_baseline" not in r  # no torch row: no ratio made up against something else
        assert r["speedup_vs_onnxruntime_fp32"] == 1.0
        assert (r["backend"], r["precision"], r["batch_size"]) == ("onnxruntime", "fp32", int(r["key"][-7]))


def test_markdown_says_what_the_json_says(small_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(small_report)
    rep["warnings"] = ["image/onnxruntime-fp32/b1/model: noisy (made up for the test)"]
    rep["skipped"] = [{"row": "openvino", "reason": "the bundle has no artifact for it"}]
    md = to_markdown(rep)
    table = [line for line in md.splitlines() if line.startswith("| ") and "/b" in line]
    assert len(table) == len(rep["rows"])
    for r, line in zip(rep["rows"], table, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["key"] and cells[2] == f"{r['median_ms']:.2f}" and cells[3] == f"{r['p90_ms']:.2f}"
    assert "- image/onnxruntime-fp32/b1/model: noisy (made up for the test)" in md
    assert "skipped openvino: the bundle has no artifact for it" in md
    assert re.search(r"^# edgeclip bench \(" + re.escape(rep["created"]), md)


def test_top1_delta_is_against_the_reference_row_not_the_first_artifact(tiny_checkpoint: Path,
                                                                        tmp_path: Path) -> None:
    """Without torch, the fp32 artifact is the reference for cosine and for the top-1 delta, even when
    the bundle lists an INT8 artifact first: the budget warning must judge INT8 against fp32."""
    from edgeclip.bundle import Bundle
    from edgeclip.export.driver import export_bundle

    out = tmp_path / "mixed.edgeclip"
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="int8-dynamic", encoders=["image"])
    export_bundle(tiny_checkpoint, out, targets=["onnx"], precision="fp32")
    images = [a.precision for a in Bundle.open(out).manifest.artifacts if a.encoder == "image"]
    assert images == ["int8-dynamic", "fp32"]
    cfg = BenchConfig(bundle=out, baseline="none", batch_sizes=[1], runs=3, warmup=0, threads=1, end_to_end=False,
                      memory=False, eval_data="builtin:shapes", eval_size=240, label_classes=0)
    rows = {r["precision"]: r for r in run_bench(cfg, log=lambda _: None)["rows"] if r["encoder"] == "image"}
    assert rows["int8-dynamic"]["cosine_ref"] == "onnxruntime-fp32"
    assert rows["fp32"]["top1_delta"] == 0.0
    assert rows["int8-dynamic"]["top1_delta"] == pytest.approx(rows["int8-dynamic"]["top1"] - rows["fp32"]["top1"],
                                                              abs=0.011)
    # --precisions keeps only what was asked for, and says so when the bundle lacks one
    cfg = BenchConfig(bundle=out, baseline="none", backends=["onnxruntime"], precisions=["fp32", "fp16"],
                      batch_sizes=[1], runs=3, warmup=0, encoders=["image"], end_to_end=False, memory=False)
    rep = run_bench(cfg, log=lambda _: None)
    assert [r["key"] for r in rep["rows"]] == ["image/onnxruntime-fp32/b1/model"]
    assert [s["row"] for s in rep["skipped"]] == ["onnxruntime-fp16"]
