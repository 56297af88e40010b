"""Bench rows for RKNN on rknn-toolkit2's PC simulator: accuracy against torch, never timed, and the
report says why (the simulator's speed is not the NPU's)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeclip.bench.report import to_markdown
from edgeclip.bench.run import BenchConfig, run_bench
from edgeclip.export.driver import export_bundle
from edgeclip.runtime.backends.rknn_toolkit import has_toolkit_env
from tests.conftest import TINY_CLASSES

pytestmark = pytest.mark.skipif(not has_toolkit_env(), reason="the RKNN toolkit environment is absent: create it "
                                "with `python -m edgeclip.runtime.backends.rknn_toolkit`")
FP16_MIN_COSINE = 0.999  # the README's fp16 parity


def test_rknn_rows_are_accuracy_only(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))
    export_bundle(tiny_checkpoint, bundle, targets=["rknn"], precision="fp16", encoders=["image"],
                  labels={"default": (TINY_CLASSES, None)}, options={"rknn_platform": "rk3588"})
    cfg = BenchConfig(bundle=bundle, checkpoint=tiny_checkpoint, encoders=["image"], batch_sizes=[1], runs=2,
                      warmup=1, min_time_s=None, eval_data="builtin:shapes", eval_size=24)
    report = run_bench(cfg, log=lambda _: None)
    assert {r["backend"] for r in report["rows"]} == {"torch", "onnxruntime"}  # the simulator is never timed
    (row,) = report["simulated"]
    assert (row["key"], row["cosine_ref"], row["eval_images"]) == ("image/rknn-fp16", "torch-fp32", 24)
    assert row["cosine_min"] >= FP16_MIN_COSINE
    torch_top1 = next(r["top1"] for r in report["rows"] if r["backend"] == "torch")
    assert abs(row["top1"] - torch_top1) <= 100 / 24 + 1e-9  # at most one image of 24 changes its label
    (line,) = [s for s in report["skipped"] if "rknn" in s["row"]]
    assert "simulator" in line["reason"] and "not the device's" in line["reason"]
    assert "not the device's" in to_markdown(report)
